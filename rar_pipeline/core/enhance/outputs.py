"""One function per enhancement asset: what the asset computes, on records, without Dagster.

    fit_captioner       train-split queries + pools  -> the offline caption memory
    caption_candidates  one pool shard               -> captions (corpus_captions)
    merge_corpus        shard + its captions         -> enhanced_corpus   (in `merge`)
    rewrite_queries     one query task               -> enhanced_queries

`code_versions` says which prompts and settings shape each asset's output: the routing
table (`prompts.CORPUS_ROUTES` / `QUERY_ROUTES`) decides it, as it decides cache keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from rar_pipeline.core.corpus.records import Candidate, Query
from rar_pipeline.core.corpus.tables import (
    frame_to_records,
    iter_parquet_batches,
    write_parquet_chunks,
)
from rar_pipeline.core.enhance.cache import EnhancementCache
from rar_pipeline.core.enhance.engine import (
    EnhanceOptions,
    EnhanceStats,
    ItemOutput,
    WorkItem,
    plan_candidate,
    plan_query,
    run_enhancement,
)
from rar_pipeline.core.enhance.merge import Merged, merge_queries
from rar_pipeline.core.enhance.perception import Perceiver
from rar_pipeline.core.enhance.prompts import VISUAL_CONTEXT_TEMPLATE, PromptSpec, side_version
from rar_pipeline.core.enhance.vlm.base import VLM
from rar_pipeline.core.enhance.vlm.offline import OFFLINE_VERSION, CaptionMemory
from rar_pipeline.core.files import TextColumnHasher

CAPTION_COLUMNS = ["did", "item_type", "caption", "status", "error"]


def code_versions(backend: str, model_id: str, options: EnhanceOptions) -> dict[str, str]:
    """Each enhancement asset's code version for a backend, model and options.

    Args:
        backend: the backend name.
        model_id: the model id the backend resolves to.
        options: sampling, guard policy and query-type overrides.
    """
    shaping = [
        f"backend={backend}",
        f"model={model_id}",
        f"temperature={options.temperature}",
        f"seed={options.seed}",
    ]
    guard = f"guard={options.guard.value}"
    prompts = options.prompt_set()
    overrides = json.dumps(dict(options.query_type_overrides), sort_keys=True)
    return {
        "offline_captioner": OFFLINE_VERSION,
        "corpus_captions": side_version("corpus", *shaping, prompts=prompts),
        # The merge "uses" the caption prompt through its input: including it makes a prompt
        # edit mark enhanced_corpus stale at once (Dagster propagates code-version staleness
        # to descendants only after the upstream is rematerialized).
        "enhanced_corpus": side_version(
            "corpus", *shaping, VISUAL_CONTEXT_TEMPLATE, guard, prompts=prompts
        ),
        "enhanced_queries": side_version(
            "query", *shaping, f"overrides={overrides}", guard, prompts=prompts
        ),
    }


@dataclass
class Captioned:
    """Captions of one pool shard and what producing them cost."""

    frame: pd.DataFrame  # CAPTION_COLUMNS, one row per candidate
    stats: EnhanceStats
    samples: list[tuple[str, Any, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Enhancer:
    """What every enhancement step works with.

    Attributes:
        vlm: the backend.
        cache: read first, written as work proceeds.
        options: batch size, attempts, sampling, guard policy, query-type overrides.
        root: the data root that image paths are relative to.
    """

    vlm: VLM
    cache: EnhancementCache
    options: EnhanceOptions
    root: Path

    @cached_property
    def prompts(self) -> dict[str, PromptSpec]:
        """The prompts in force (the options' prompts file over the shipped ones)."""
        return self.options.prompt_set()

    def run(
        self, items: Sequence[WorkItem], progress: Callable[[int], None] | None = None
    ) -> tuple[dict[str, ItemOutput], EnhanceStats]:
        """`run_enhancement` of these items with this backend, cache and options."""
        return run_enhancement(items, self.vlm, self.cache, self.options, progress=progress)


def caption_candidates(
    candidates: Sequence[Candidate],
    enhancer: Enhancer,
    *,
    progress: Callable[[int], None] | None = None,
    n_samples: int = 5,
) -> Captioned:
    """Caption a shard's image and image+text candidates; text-only ones pass through.

    Args:
        candidates: the shard's candidates.
        enhancer: backend, cache, options and data root.
        progress: called with the number of items finished.
        n_samples: how many captioned items to keep as samples.
    """
    items = [plan_candidate(c, enhancer.root, enhancer.prompts) for c in candidates]
    outputs, stats = enhancer.run(items, progress)
    rows = [
        [c.did, outputs[c.did].item_type.value, outputs[c.did].generated]
        + [outputs[c.did].status, outputs[c.did].error]
        for c in candidates
    ]
    samples = [
        (c.did, c.img_path, outputs[c.did].generated)
        for c in candidates
        if outputs[c.did].generated
    ][:n_samples]
    return Captioned(pd.DataFrame(rows, columns=CAPTION_COLUMNS), stats, samples)


SHARD_CHUNK_ROWS = 100_000  # candidates read, enhanced and written at a time


def iter_pool(path: Path, chunk_rows: int = SHARD_CHUNK_ROWS) -> Iterator[list[Candidate]]:
    """A `candidate_pool` table's candidates, `chunk_rows` at a time, in table order."""
    for batch in iter_parquet_batches(path, chunk_rows):
        yield frame_to_records(batch.to_pandas(), Candidate)


def pool_rows(path: Path) -> int:
    """Rows of a Parquet table, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


@dataclass
class CaptionedShard:
    """What `caption_shard` wrote and counted.

    Attributes:
        path: the captions table.
        rows: its rows (one per candidate).
        images: rows whose item is not text-only; `captioned`: those with a caption.
        data_version: `values_hash` of the caption column, as `defs.io.data_version`.
    """

    path: Path
    rows: int
    images: int
    captioned: int
    stats: EnhanceStats
    samples: list[tuple[str, Any, Any]]
    data_version: str


def caption_shard(
    pool: Path,
    output: Path,
    enhancer: Enhancer,
    *,
    progress: Callable[[int], None] | None = None,
    n_samples: int = 5,
    chunk_rows: int = SHARD_CHUNK_ROWS,
) -> CaptionedShard:
    """`caption_candidates` over a pool table, `chunk_rows` candidates at a time.

    Writes the captions table (atomically) as `caption_candidates(all).frame` would be
    written, with the same stats and samples; memory holds one chunk. One difference: an
    item whose content (text, image, prompt) repeats one of an earlier chunk is read from
    the cache (status "cached") instead of being sent to the backend again.
    """
    stats = EnhanceStats()
    samples: list[tuple[str, Any, Any]] = []
    counts = {"rows": 0, "images": 0, "captioned": 0}
    digest = TextColumnHasher()

    def frames() -> Iterator[pd.DataFrame]:
        for candidates in iter_pool(pool, chunk_rows):
            part = caption_candidates(candidates, enhancer, progress=progress, n_samples=n_samples)
            stats.add(part.stats)
            samples.extend(part.samples[: n_samples - len(samples)])
            frame = part.frame
            images = frame[frame["item_type"] != "text"]
            counts["rows"] += len(frame)
            counts["images"] += len(images)
            counts["captioned"] += int(images["caption"].notna().sum())
            digest.update(None if isinstance(v, float) else v for v in frame["caption"])
            yield frame
        yield pd.DataFrame(columns=CAPTION_COLUMNS)

    path = write_parquet_chunks(frames(), output)
    return CaptionedShard(path, **counts, stats=stats, samples=samples,
                          data_version=digest.hexdigest())  # fmt: skip


@dataclass
class Rewritten:
    """One query task as the retriever embeds it, and what producing it cost."""

    merged: Merged
    stats: EnhanceStats


def rewrite_queries(
    queries: Sequence[Query],
    enhancer: Enhancer,
    *,
    task: str,
    progress: Callable[[int], None] | None = None,
) -> Rewritten:
    """Caption, rewrite or distil each query by its type, then guard and merge.

    Args:
        queries: the task's queries (every split).
        enhancer: backend, cache, options (the task's query-type override applies) and root.
        task: the task's name (its override, if any, applies).
        progress: called with the number of items finished.
    """
    options = enhancer.options
    override = options.query_type_overrides.get(task)
    items = [plan_query(q, enhancer.root, override, enhancer.prompts) for q in queries]
    outputs, stats = enhancer.run(items, progress)
    return Rewritten(merge_queries(queries, outputs, options.guard), stats)

    return Rewritten(merge_queries(queries, outputs, options.guard), stats)


def fit_captioner(
    queries: Sequence[Query],
    candidates: dict[str, Candidate],
    root: Path,
    perceiver: Perceiver,
) -> tuple[CaptionMemory, dict[str, Any]]:
    """Fit the offline caption memory on the train split's (image, text) pairs.

    Only train-split queries are read; test items never reach the memory.

    Returns:
        The memory and what it was fitted on (counts for metadata).
    """
    train = [q for q in queries if q.split == "train"]
    memory, pairs = CaptionMemory.from_train_split(train, candidates, root, perceiver)
    return memory, {
        "pairs": len(memory),
        "train_queries": len(train),
        "distinct_images": len({str(p) for p, _ in pairs}),
        "content_hash": memory.content_hash,
    }
