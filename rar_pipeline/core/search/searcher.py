"""`Searcher`: one config's retriever and index table, answering queries with ranked hits.

A query takes the path a test query takes through the pipeline: enhancement as the
`enhanced_queries` asset does it (`core.search.enhance`), the config's choice of text
(`pairs.query_text`), the config's retriever, and the config's table
(`core.search.store.dense_search`, what evaluation ranks with). Models are loaded once, when
the searcher is opened, never per query.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from rar_pipeline.core import names
from rar_pipeline.core.corpus.records import Modality
from rar_pipeline.core.enhance.engine import DEFAULT_OPTIONS
from rar_pipeline.core.index.ann import DEFAULT_PLAN, AnnPlan
from rar_pipeline.core.index.configs import IndexedConfig
from rar_pipeline.core.retrieval.checkpoint import is_untrained
from rar_pipeline.core.retrieval.encoders.base import EncodeItem, Encoder
from rar_pipeline.core.retrieval.pairs import query_text
from rar_pipeline.core.search.enhance import EnhancedQuery, QueryEnhancer, query_type
from rar_pipeline.core.search.query import MAX_K, IndexUnavailable, SearchError, SearchQuery
from rar_pipeline.core.search.store import (
    DenseHits,
    SearchStore,
    TableSearch,
    dense_search,
    hits_by_query,
)

# what a hit shows besides (pool, did, score)
HIT_COLUMNS = ["modality", "txt", "text", "img_path", "retriever"]
MODALITIES = tuple(m.value for m in Modality)


@dataclass(frozen=True)
class SearchHit:
    """One ranked candidate.

    Attributes:
        rank: 1 for the best.
        did: the candidate's id.
        score: cosine similarity (dense), or the fused relevance (hybrid).
        pool: the pool the hit was searched in, or the first that holds it.
        modality: text | image | image,text.
        txt: the candidate's own text.
        text: what the retriever embedded for it (its text, caption, or both).
        img_path: its image, relative to the data root.
    """

    rank: int
    did: str
    score: float
    pool: str
    modality: str
    txt: str | None
    text: str | None
    img_path: str | None


@dataclass
class SearchResult:
    """A query's hits and how they were found.

    Attributes:
        config: the config searched.
        retriever: the checkpoint that embedded the query ("<config>@<hash>").
        query_type: how enhancement classified the query.
        searched_text: the text that was embedded (and full-text searched, with hybrid).
        enhancement: the query's enhancement: passthrough | generated | cached | failed,
            or "not used" where the config embeds queries as they are.
        hybrid: whether dense and full-text results were fused.
        hits: best first.
        seconds: enhance, embed, search and total (a batch's time split evenly).
        vlm_calls: requests handed to the VLM for this query (0 on a cache hit).
        warnings: what the searcher could not do as asked, in words.
    """

    query: SearchQuery
    config: str
    retriever: str
    query_type: str
    searched_text: str | None
    enhancement: str
    hybrid: bool
    hits: list[SearchHit]
    seconds: dict[str, float]
    vlm_calls: float = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what `rar search --format json` and the page's API return)."""
        return {
            "query": {
                "text": self.query.text,
                "image": str(self.query.image) if self.query.image else None,
                "task": self.query.task,
            },
            **{k: v for k, v in asdict(self).items() if k not in ("query", "hits")},
            "hits": [asdict(h) for h in self.hits],
        }

    def as_text(self) -> str:
        """The result as `rar search` prints it: the query as enhanced, then the hits."""
        q = self.query
        calls = "no VLM call" if not self.vlm_calls else f"{self.vlm_calls:g} VLM calls"
        timing = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.seconds.items())
        lines = [
            f"query:     {q.text or ''}" + (f"  [image {q.image}]" if q.image else ""),
            f"type:      {self.query_type} (enhancement: {self.enhancement}, {calls})",
            f"searched:  {self.searched_text or '(the image alone)'}",
            f"config:    {self.config} (retriever {self.retriever}), "
            + ("hybrid (dense + full text, RRF)" if self.hybrid else "dense"),
            f"time:      {timing}",
            *(f"warning:   {w}" for w in self.warnings),
            "",
            f"{'rank':>4}  {'did':<14} {'score':>7}  {'modality':<10}  {'text':<60}  image",
        ]
        for h in self.hits:
            snippet = " ".join((h.text or h.txt or "").split())
            snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
            lines.append(
                f"{h.rank:>4}  {h.did:<14} {h.score:>7.4f}  {h.modality:<10}  {snippet:<60}  "
                f"{h.img_path or '-'}"
            )
        if not self.hits:
            lines.append("  (no results)")
        return "\n".join(lines)


class Searcher:
    """Answers queries with one config's retriever over its index table.

    Args:
        config: which retriever and representations.
        encoder: the config's retriever (trained, or the base one for a corpus without a
            train split).
        retriever: the retriever's reference ("<config>@<hash>" or "<config>@untrained").
        store: the vector store holding the config's table.
        enhancer: the pipeline's VLM, cache and options; needed by configs that embed
            enhanced queries.
        plan: the table's ANN query parameters.

    Raises:
        IndexUnavailable: the config's table does not exist or cannot be read, or it was
            embedded by a trained retriever while `retriever` is the untrained one (its
            checkpoint is gone).
        SearchError: the config needs an enhancer and none was given.
    """

    def __init__(
        self,
        config: IndexedConfig,
        encoder: Encoder,
        retriever: str,
        store: SearchStore,
        enhancer: QueryEnhancer | None,
        plan: AnnPlan = DEFAULT_PLAN,
    ) -> None:
        self.config, self.encoder, self.retriever = config, encoder, retriever
        self.store, self.enhancer, self.plan = store, enhancer, plan
        with self._reading():
            if config.table not in store.table_names():
                raise IndexUnavailable(
                    f"there is no index for config {config.name!r} (make demo, or rar run "
                    "--data DIR)",
                    config.index_asset,
                )
            self.rows = store.count_rows(config.table)
            embedded_by = store.peek(config.table, ["retriever"])["retriever"].tolist()
        if config.representation.enhanced_queries and enhancer is None:
            raise SearchError(f"config {config.name!r} embeds enhanced queries: it needs a VLM")
        trained = [r for r in embedded_by if not is_untrained(str(r))]
        if is_untrained(retriever) and trained:
            raise IndexUnavailable(
                f"the {config.name} index was embedded by {trained[0]}, but the "
                f"{config.retriever.name} checkpoint is not there to embed queries",
                config.checkpoint_asset,
            )
        self._pools: list[str] | None = None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn a store's failure (a damaged or half-deleted table) into `IndexUnavailable`.

        Any exception the store raises is about the table, not the query: the query's own
        mistakes are refused before the store is asked (`_check`), and full-text queries
        are matched as plain words, never parsed.
        """
        try:
            yield
        except SearchError:
            raise
        except Exception as exc:  # LanceDB raises OSError, RuntimeError, ValueError, ...
            raise IndexUnavailable(
                f"the {self.config.name} index cannot be read ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no message'})",
                self.config.index_asset,
            ) from exc

    @property
    def pools(self) -> list[str]:
        """The pools the table holds (read once, when first asked: it scans the table)."""
        if self._pools is None:
            found: set[str] = set()
            with self._reading():
                for batch in self.store.row_hashes(self.config.table):
                    found.update(batch.column("pools").flatten().unique().to_pylist())
            self._pools = sorted(found)
        return self._pools

    def search(
        self,
        query: SearchQuery,
        k: int = 10,
        *,
        hybrid: bool = False,
        modality: Sequence[str] | None = None,
        pool: str | None = None,
    ) -> SearchResult:
        """One query's k best candidates (see `search_many`)."""
        return self.search_many([query], k, hybrid=hybrid, modality=modality, pool=pool)[0]

    def search_many(
        self,
        queries: Sequence[SearchQuery],
        k: int = 10,
        *,
        hybrid: bool = False,
        modality: Sequence[str] | None = None,
        pool: str | None = None,
    ) -> list[SearchResult]:
        """Each query's k best candidates; queries are enhanced and embedded in batches.

        Args:
            queries: the queries.
            k: hits per query.
            hybrid: fuse dense hits with the full-text index's (reciprocal rank fusion).
            modality: only candidates of these modalities (text, image, "image,text").
            pool: only this pool's candidates (default: every pool, each candidate once).

        Raises:
            SearchError: k outside 1..MAX_K, an unknown modality or pool.
            IndexUnavailable: the table cannot be read.
        """
        self._check(k, modality, pool)
        started = time.perf_counter()
        enhanced, vlm_calls = self._enhance(queries)
        enhanced_at = time.perf_counter()
        rep = self.config.representation
        texts = [
            query_text(rep, q.text, e.enhanced_txt) for q, e in zip(queries, enhanced, strict=True)
        ]
        items = [EncodeItem(t, q.image) for t, q in zip(texts, queries, strict=True)]
        dense, by_query = self._rank(items, texts, k, hybrid, modality, pool)
        embedded, none_found = dense.embedded, dense.hits.iloc[0:0]
        done = time.perf_counter()
        n = max(1, len(queries))
        seconds = {
            "enhance": (enhanced_at - started) / n,
            "embed": dense.embed_seconds / n,
            "search": (done - enhanced_at - dense.embed_seconds) / n,  # dense, and fusion
            "total": (done - started) / n,
        }
        results = []
        for i, (q, e, text) in enumerate(zip(queries, enhanced, texts, strict=True)):
            found = by_query.get(i, none_found)
            result = SearchResult(
                query=q,
                config=self.config.name,
                retriever=self.retriever,
                query_type=e.query_type,
                searched_text=text,
                enhancement=e.status if rep.enhanced_queries else "not used",
                hybrid=hybrid and bool(text),
                hits=self._hits(found, pool),
                seconds={name: round(value, 6) for name, value in seconds.items()},
                vlm_calls=vlm_calls / n,
            )
            result.warnings = self._warnings(
                result, e, embedded.failed.get(i), embedded.degraded.get(i), hybrid,
                set(found["retriever"].dropna()) - {self.retriever},
            )  # fmt: skip
            results.append(result)
        return results

    # -- the steps

    def _rank(
        self,
        items: Sequence[EncodeItem],
        texts: Sequence[str | None],
        k: int,
        hybrid: bool,
        modality: Sequence[str] | None,
        pool: str | None,
    ) -> tuple[DenseHits, dict[int, pd.DataFrame]]:
        """Embed and search; with `hybrid`, fuse each query that has text with full text."""
        where = TableSearch(pool, self.plan, modality, HIT_COLUMNS)
        with self._reading():
            dense = dense_search(self.store, self.config, self.encoder, items, k, where)
            by_query = hits_by_query(dense.hits)
            if hybrid:
                for i, text in enumerate(texts):
                    if text and i not in dense.embedded.failed:
                        vector = dense.embedded.vectors[i]
                        by_query[i] = self.store.search_hybrid(
                            self.config.table, vector, text, k, where
                        )
        return dense, by_query

    def _check(self, k: int, modality: Sequence[str] | None, pool: str | None) -> None:
        if not 1 <= k <= MAX_K:
            raise SearchError(f"k must be between 1 and {MAX_K}, not {k}")
        unknown = sorted(set(modality or ()) - set(MODALITIES))
        if unknown:
            raise SearchError(f"unknown modality {unknown}; choose from {', '.join(MODALITIES)}")
        if pool is not None and pool not in self.pools:
            raise SearchError(f"no pool {pool!r} in the index; it has {', '.join(self.pools)}")

    def _enhance(self, queries: Sequence[SearchQuery]) -> tuple[list[EnhancedQuery], int]:
        if not self.config.representation.enhanced_queries:
            # the config embeds queries as they are: no VLM call, just their type
            options = self.enhancer.options if self.enhancer else DEFAULT_OPTIONS
            return [EnhancedQuery(query_type(q, options), None, "passthrough") for q in queries], 0
        assert self.enhancer is not None
        enhanced, stats = self.enhancer(queries)
        return enhanced, stats.backend_calls

    def _hits(self, found: pd.DataFrame, pool: str | None) -> list[SearchHit]:
        def text(value: Any) -> str | None:
            return value if isinstance(value, str) else None

        columns = [found[c].tolist() for c in ("did", "score", "pools", "modality", "txt",
                                               "text", "img_path")]  # fmt: skip
        return [
            SearchHit(
                rank,
                str(did),
                float(score),
                pool or str(pools[0]),
                str(modality),
                text(txt),
                text(searched),
                text(img),
            )  # fmt: skip
            for rank, (did, score, pools, modality, txt, searched, img) in enumerate(
                zip(*columns, strict=True), start=1
            )
        ]

    def _warnings(
        self,
        result: SearchResult,
        enhanced: EnhancedQuery,
        failed: str | None,
        degraded: str | None,
        hybrid: bool,
        other_retrievers: set[str],
    ) -> list[str]:
        out = []
        if other_retrievers:
            out.append(
                f"the index was embedded by {', '.join(sorted(other_retrievers))} but queries "
                f"by {self.retriever}: {names.materialize(self.config.index_asset)}"
            )
        if result.enhancement == "failed":
            out.append(f"enhancement failed ({enhanced.error}); searched with the query's text")
        if enhanced.guard_flagged:
            out.append(f"the rewrite names {', '.join(enhanced.guard_flagged)}, which the "
                       "query's own text contradicts")  # fmt: skip
        if failed:
            out.append(f"the query could not be embedded: {failed}")
        if degraded:
            out.append(f"the query's image could not be embedded ({degraded}); text only")
        if hybrid and not result.searched_text:
            out.append("hybrid needs query text; this image-only query was searched dense only")
        return out
