"""Enhance search queries exactly as the pipeline enhances a task's queries.

`enhance_queries` hands search queries to `core.enhance.outputs.rewrite_queries`, the
function behind the `enhanced_queries` asset: the same classification (and a task's
override), prompts, backend, cache and guard. A query enhanced before (the same words and
the same image bytes, under the same prompt version, backend, model and sampling) is a
cache hit and costs no VLM call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rar_pipeline.core.enhance.cache import EnhancementCache
from rar_pipeline.core.enhance.classify import classify_query
from rar_pipeline.core.enhance.engine import EnhanceOptions, EnhanceStats
from rar_pipeline.core.enhance.outputs import Enhancer, rewrite_queries
from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.enhance.vlm.base import VLM
from rar_pipeline.core.search.query import SearchQuery


@dataclass(frozen=True)
class EnhancedQuery:
    """What enhancement made of one search query.

    Attributes:
        query_type: text | image | qa | modification.
        enhanced_txt: the text the retriever embeds for configs that read enhanced queries.
        status: passthrough | generated | cached | failed.
        error: why enhancement failed (the query then falls back to its own text).
        guard_flagged: entities of the rewrite that contradict the query's own text.
    """

    query_type: str
    enhanced_txt: str | None
    status: str
    error: str | None = None
    guard_flagged: tuple[str, ...] = ()


def query_type(query: SearchQuery, options: EnhanceOptions) -> str:
    """The query's type as enhancement classifies it (without enhancing it)."""
    override = options.query_type_overrides.get(query.task or "")
    return classify_query(query.record("search"), override).value


@dataclass
class QueryEnhancer:
    """The pipeline's VLM backend, cache and options, opened once and used per search.

    Attributes:
        open_vlm: builds the backend (called on first use: loading a model takes a while).
        cache_path: the enhancement cache the pipeline writes (a file, or its cache root).
        options: the run options the pipeline enhances with (guard, overrides, sampling).
    """

    open_vlm: Callable[[], VLM]
    cache_path: Path | CacheRoot
    options: EnhanceOptions
    _vlm: VLM | None = field(default=None, init=False, repr=False)
    _cache: EnhancementCache | None = field(default=None, init=False, repr=False)

    @property
    def vlm(self) -> VLM:
        if self._vlm is None:
            self._vlm = self.open_vlm()
        return self._vlm

    @property
    def cache(self) -> EnhancementCache:
        if self._cache is None:
            self._cache = EnhancementCache(self.cache_path)
        return self._cache

    def open(self) -> None:
        """Load the backend and open the cache now, not on the first query."""
        self.vlm, self.cache  # noqa: B018 - loading is the point

    def __call__(self, queries: Sequence[SearchQuery]) -> tuple[list[EnhancedQuery], EnhanceStats]:
        """Enhance queries: one result per query, in order, and what it cost."""
        return enhance_queries(queries, self.vlm, self.cache, self.options)


def enhance_queries(
    queries: Sequence[SearchQuery],
    vlm: VLM,
    cache: EnhancementCache,
    options: EnhanceOptions,
) -> tuple[list[EnhancedQuery], EnhanceStats]:
    """Caption, rewrite or distil each query by its type, through the cache, then guard.

    Queries are grouped by task (whose override applies) and by image folder (image paths
    are relative to one folder per call), each group one `rewrite_queries` call.
    """
    total = EnhanceStats()
    out: dict[int, EnhancedQuery] = {}
    groups: dict[tuple[str, Path], list[int]] = {}
    for i, q in enumerate(queries):
        folder = q.image.parent if q.image is not None else Path(".")
        groups.setdefault((q.task or "", folder), []).append(i)
    for (task, folder), indexes in groups.items():
        records = [queries[i].record(f"q{i}") for i in indexes]
        result = rewrite_queries(records, Enhancer(vlm, cache, options, folder), task=task)
        frame = result.merged.frame
        for i, row in zip(indexes, frame.itertuples(index=False), strict=True):
            out[i] = EnhancedQuery(
                query_type=row.query_type,
                enhanced_txt=row.enhanced_txt,
                status=row.status,
                error=row.error,
                guard_flagged=tuple(row.guard_flagged),
            )
        total.add(result.stats)
    return [out[i] for i in range(len(queries))], total
