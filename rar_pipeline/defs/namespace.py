"""A corpus is a namespace: its assets' keys start with its name, its partitions carry it.

Two corpora run on one Dagster instance never share partitions, asset history or "latest
evaluation": the demo's captions are `demo/corpus_captions` with partitions
`demo__pool_shards`, M-BEIR's `M_BEIR/corpus_captions` with `M_BEIR__pool_shards`. The
name is the corpus' (its data root's folder name, `CorpusConfig.name`), made a valid
Dagster name. Each corpus is its own code location (`rar ui`), so one UI shows several
side by side; job, sensor and group names stay as they are, within their location.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import dagster as dg

from rar_pipeline.defs.partitions import POOL_SHARDS, QUERY_TASKS, CorpusPartitions, kind_of


def namespace_of(corpus: str) -> str:
    """The namespace of the corpus called `corpus`: its name in Dagster's alphabet."""
    return re.sub(r"[^A-Za-z0-9_]", "_", corpus)


def in_namespace(
    assets: Sequence[dg.AssetsDefinition], namespace: str
) -> list[dg.AssetsDefinition]:
    """`assets` with their keys, their inputs' keys and their partitions in `namespace`.

    Keys already in a namespace (more than one part) stay as they are, so a graph can be
    put in it stage by stage (a stage's assets may name earlier ones, already in it, as
    inputs).
    """
    if not namespace:
        return list(assets)
    pools, tasks = CorpusPartitions.in_namespace(namespace)
    partitions = {POOL_SHARDS: pools, QUERY_TASKS: tasks}

    def moved(spec: dg.AssetSpec) -> dg.AssetSpec:
        kind = kind_of(spec.partitions_def)
        return spec if kind is None else spec.replace_attributes(partitions_def=partitions[kind])

    def key(k: dg.AssetKey) -> dg.AssetKey:
        return k if len(k.path) > 1 else dg.AssetKey([namespace, *k.path])

    out = []
    for asset in dg.map_asset_specs(moved, list(assets)):
        named = {k for s in asset.specs for k in (s.key, *(d.asset_key for d in s.deps))}
        out.append(asset.with_attributes(asset_key_replacements={k: key(k) for k in named}))
    return out


def bare_name(key: dg.AssetKey | str) -> str:
    """An asset's name without its namespace: `demo/corpus_captions` -> `corpus_captions`."""
    path = key.path if isinstance(key, dg.AssetKey) else key.split("/")
    return path[-1]
