"""What `rar refresh` runs: the outdated partitions, the missing ones, and what reads them.

After a prompt edit (or a new VLM, sampling or retriever setting), `rar run` would go
through every partition, served from the caches. `rar refresh` runs only the asset
partitions whose latest materialization carries another code version than the
definitions now (the ones the `current_version` checks list), those never materialized,
and, in Dagster's order, everything downstream of a partition it runs. Training is left
out unless asked for (it costs GPU hours): an outdated checkpoint is then reported, and
the index that embeds with it fails its blocking `current_checkpoint` check, so the
evaluation does not compare configs built from different enhanced data.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.defs.drift import Built, built_versions, versioned
from rar_pipeline.defs.launch import upstream


class Refresh:
    """Decides, step by step in Dagster's order, whether `rar refresh` runs a partition.

    Call it with each (asset, partition) in order; it answers why the partition runs, or
    None to leave it as it is, and remembers what it chose so that downstream follows.
    """

    def __init__(
        self,
        assets: Sequence[dg.AssetsDefinition],
        instance: dg.DagsterInstance,
        *,
        include_training: bool = False,
    ) -> None:
        self.graph = upstream(assets)
        self.instance = instance
        self.include_training = include_training
        self.assets = {a.key.to_user_string(): a for a in versioned(assets)}
        self.chosen: dict[tuple[str, str | None], str] = {}
        self.held: dict[str, str] = {}  # checkpoints left outdated -> why they would run
        self._built: dict[str, dict[str | None, Built]] = {}

    def _why_own(self, asset: str, partition: str | None) -> str | None:
        definition = self.assets.get(asset)
        if definition is None:
            return None  # no code version: nothing to compare (the demo's own assets)
        if asset not in self._built:
            self._built[asset] = built_versions(self.instance, definition)
        built = self._built[asset].get(partition)
        if built is None:
            return "never materialized"
        if built.code_version != definition.code_versions_by_key[definition.key]:
            return "built by an older code version"
        return None

    def _why_upstream(self, asset: str, partition: str | None) -> str | None:
        deps, partitioning = self.graph.get(asset, (set(), None))
        for dep, dep_partition in self.chosen:
            if dep not in deps:
                continue
            same = partitioning is not None and self.graph[dep][1] == partitioning
            if not same or dep_partition == partition:
                label = f"{dep}[{dep_partition}]" if dep_partition else dep
                return f"reads {label}, refreshed"
        return None

    def __call__(self, asset: str, partition: str | None) -> str | None:
        why = self._why_own(asset, partition) or self._why_upstream(asset, partition)
        if why is None:
            return None
        if asset.startswith(names.RETRIEVER_CHECKPOINT) and not self.include_training:
            self.held[asset] = why
            return None
        self.chosen[(asset, partition)] = why
        return why

    def summary(self, *, plan: bool = False) -> str:
        """What the refresh ran (or, with `plan`, would run) and what it left out."""
        lines = [
            f"{'would refresh' if plan else 'refreshed'} {len(self.chosen)} asset partitions"
            if self.chosen
            else "everything is up to date: nothing to refresh"
        ]
        if self.held:
            listed = ", ".join(f"{a} ({why})" for a, why in sorted(self.held.items()))
            lines.append(
                f"training left out: {listed}. Their indexes' current_checkpoint checks keep "
                "the evaluation from comparing configs built from different enhanced data; "
                "`rar refresh --include-training` retrains them."
            )
        return "\n".join(lines)
