"""What the retriever embeds: an item's own text merged with what the VLM generated.

Each item's type is decided once, when it is planned (`engine.plan_*`), and travels with
it (the `item_type` column of the captions, `ItemOutput.item_type` for queries); nothing
here classifies again. The hallucination guard runs here, on the generated text, before
the merge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from rar_pipeline.core import names
from rar_pipeline.core.corpus.records import Candidate, Query
from rar_pipeline.core.corpus.tables import (
    frame_to_records,
    iter_parquet_batches,
    write_parquet_chunks,
)
from rar_pipeline.core.enhance.classify import CandidateType, QueryType
from rar_pipeline.core.enhance.engine import ItemOutput
from rar_pipeline.core.enhance.guard import GuardPolicy, apply_guard
from rar_pipeline.core.enhance.prompts import VISUAL_CONTEXT_TEMPLATE
from rar_pipeline.core.files import TextColumnHasher

CORPUS_COLUMNS = [
    "did",
    "modality",
    "item_type",
    "txt",
    "img_path",
    "enhanced_txt",
    "guard_flagged",
]
QUERY_COLUMNS = [
    "qid",
    "split",
    "task_id",
    "query_type",
    "modality",
    "txt",
    "img_path",
    "pos_cand_list",
    "enhanced_txt",
    "status",
    "error",
    "guard_flagged",
]


def candidate_text(
    item_type: CandidateType | str, txt: str | None, caption: str | None
) -> str | None:
    """The text a candidate is embedded with after enhancement.

    Text-only: unchanged. Image-only: the caption (None if captioning failed: the retriever
    falls back to the image). Image+text: its text plus "Visual Context: <caption>".
    """
    kind = CandidateType(item_type)
    if kind is CandidateType.TEXT:
        return txt
    if kind is CandidateType.IMAGE:
        return caption
    if not caption:
        return txt
    return VISUAL_CONTEXT_TEMPLATE.format(text=txt, caption=caption)


def query_text(item_type: QueryType | str, txt: str | None, generated: str | None) -> str | None:
    """The text a query is embedded with after enhancement (its image still goes along).

    Text-only: unchanged. Image-only: the caption. QA and modification: the rewrite or the
    distilled constraints, falling back to the original text when enhancement failed.
    """
    kind = QueryType(item_type)
    if kind is QueryType.TEXT:
        return txt
    if kind is QueryType.IMAGE:
        return generated
    return generated or txt


@dataclass
class Merged:
    """A merged table and what the merge counted.

    Attributes:
        frame: one row per item (`CORPUS_COLUMNS` or `QUERY_COLUMNS`).
        items_by_type: rows per candidate or query type.
        guard_flagged: items with at least one contradicting entity.
        guard_dropped: generated texts the guard discarded (policy drop).
        samples: (id, before, after) of the first enhanced items, for a preview.
    """

    frame: pd.DataFrame
    items_by_type: Counter = field(default_factory=Counter)
    guard_flagged: int = 0
    guard_dropped: int = 0
    samples: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def without_enhanced_txt(self) -> int:
        return int(self.frame["enhanced_txt"].isna().sum()) if len(self.frame) else 0

    def _guard(self, generated: str, own: str | None, policy: GuardPolicy) -> tuple:
        result = apply_guard(generated, own, policy)
        self.guard_flagged += bool(result.flagged)
        self.guard_dropped += result.dropped
        return result.text, result.flagged


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None  # a null reads back from Parquet as NaN


def merge_corpus(
    candidates: Sequence[Candidate],
    captions: pd.DataFrame,
    policy: GuardPolicy,
    n_samples: int = 5,
) -> Merged:
    """Merge each candidate with its caption, after the guard.

    Args:
        candidates: one pool shard's candidates.
        captions: the shard's `corpus_captions` table (did, item_type, caption, ...).
        policy: the guard's policy for captions that contradict the candidate's own text.
        n_samples: how many enhanced items to keep as samples.
    """
    by_did: Mapping[str, tuple[Any, Any]] = dict(
        zip(
            captions["did"],
            zip(captions["item_type"], captions["caption"], strict=True),
            strict=True,
        )
    )
    merged = Merged(frame=pd.DataFrame(columns=CORPUS_COLUMNS))
    rows = []
    for c in candidates:
        if c.did not in by_did:
            raise KeyError(
                f"candidate {c.did} has no caption row: {names.materialize(names.CORPUS_CAPTIONS)}"
            )
        item_type, caption = by_did[c.did]
        caption, flags = _text(caption), ()
        if caption and c.txt:
            caption, flags = merged._guard(caption, c.txt, policy)
        text = candidate_text(item_type, c.txt, caption)
        merged.items_by_type[item_type] += 1
        rows.append([c.did, c.modality.value, item_type, c.txt, c.img_path, text, list(flags)])
        if item_type != CandidateType.TEXT and len(merged.samples) < n_samples:
            merged.samples.append((c.did, c.txt or c.img_path, text))
    merged.frame = pd.DataFrame(rows, columns=CORPUS_COLUMNS)
    return merged


@dataclass
class MergedShard:
    """What `merge_corpus_files` wrote and counted (a `Merged` without the frame).

    `data_version` is `values_hash` of the enhanced_txt column, as `defs.io.data_version`.
    """

    path: Path
    rows: int
    without_enhanced_txt: int
    items_by_type: Counter
    guard_flagged: int
    guard_dropped: int
    samples: list[tuple[str, Any, Any]]
    data_version: str


def merge_corpus_files(
    pool: Path,
    captions: Path,
    output: Path,
    policy: GuardPolicy,
    n_samples: int = 5,
    *,
    chunk_rows: int = 100_000,
) -> MergedShard:
    """`merge_corpus` of a pool table and its captions table, `chunk_rows` rows at a time.

    Writes the enhanced corpus (atomically) as `merge_corpus(all).frame` would be written,
    with the same counts. Captions written for this pool are in its row order and are read
    alongside it; a captions table in another order (or with other rows) is read into a
    did -> caption map first, as `merge_corpus` does.
    """
    aligned = _same_ids(pool, captions, chunk_rows)
    by_did = None if aligned else _caption_map(captions)
    counts = Merged(frame=pd.DataFrame(columns=CORPUS_COLUMNS))
    total = {"rows": 0, "without": 0}
    digest = TextColumnHasher()

    def frames():
        pool_batches = iter_parquet_batches(pool, chunk_rows)
        caption_rows = _rows(captions, ["did", "item_type", "caption"], chunk_rows)
        for batch in pool_batches:
            candidates = frame_to_records(batch.to_pandas(), Candidate)
            if by_did is None:
                part = [next(caption_rows) for _ in candidates]
                chunk = pd.DataFrame(part, columns=["did", "item_type", "caption"])
            else:
                chunk = _caption_chunk(candidates, by_did)
            merged = merge_corpus(candidates, chunk, policy, n_samples - len(counts.samples))
            counts.items_by_type.update(merged.items_by_type)
            counts.guard_flagged += merged.guard_flagged
            counts.guard_dropped += merged.guard_dropped
            counts.samples.extend(merged.samples)
            total["rows"] += len(merged.frame)
            texts = [None if isinstance(v, float) else v for v in merged.frame["enhanced_txt"]]
            total["without"] += sum(v is None for v in texts)
            digest.update(texts)
            yield merged.frame
        yield pd.DataFrame(columns=CORPUS_COLUMNS)

    path = write_parquet_chunks(frames(), output)
    return MergedShard(
        path, total["rows"], total["without"], counts.items_by_type, counts.guard_flagged,
        counts.guard_dropped, counts.samples, digest.hexdigest(),
    )  # fmt: skip


def _rows(path: Path, columns: list[str], chunk_rows: int) -> Iterator[tuple]:
    """A table's rows as tuples of `columns`, read `chunk_rows` at a time."""
    for batch in iter_parquet_batches(path, chunk_rows, columns):
        yield from zip(*(batch.column(c).to_pylist() for c in columns), strict=True)


def _same_ids(pool: Path, captions: Path, chunk_rows: int) -> bool:
    """Whether the captions table has exactly the pool's dids, in the pool's order."""
    if pq.ParquetFile(pool).metadata.num_rows != pq.ParquetFile(captions).metadata.num_rows:
        return False
    pairs = zip(_rows(pool, ["did"], chunk_rows), _rows(captions, ["did"], chunk_rows), strict=True)
    return all(a == b for a, b in pairs)


def _caption_map(captions: Path) -> dict[str, tuple[Any, Any]]:
    """Did -> (item_type, caption) of a whole captions table (the last row of a did wins)."""
    table = pq.read_table(captions, columns=["did", "item_type", "caption"])
    return {
        did: (kind, caption)
        for did, kind, caption in zip(
            *(table.column(c).to_pylist() for c in table.column_names), strict=True
        )
    }


def _caption_chunk(
    candidates: Sequence[Candidate], by_did: Mapping[str, tuple[Any, Any]]
) -> pd.DataFrame:
    """The caption rows of these candidates (a missing one stays missing: merge raises)."""
    rows = [(c.did, *by_did[c.did]) for c in candidates if c.did in by_did]
    return pd.DataFrame(rows, columns=["did", "item_type", "caption"])


def merge_queries(
    queries: Sequence[Query],
    outputs: Mapping[str, ItemOutput],
    policy: GuardPolicy,
    n_samples: int = 5,
) -> Merged:
    """Merge each query with its rewrite, after the guard (QA rewrites only).

    Args:
        queries: one task's queries, every split.
        outputs: `run_enhancement`'s output per query key (it carries the query type).
        policy: the guard's policy for rewrites that contradict the question.
        n_samples: how many enhanced items to keep as samples.
    """
    merged = Merged(frame=pd.DataFrame(columns=QUERY_COLUMNS))
    rows = []
    for q in queries:
        out = outputs[q.key]
        query_type = QueryType(out.item_type)
        generated, flags = out.generated, ()
        if generated and query_type is QueryType.QA:
            generated, flags = merged._guard(generated, q.txt, policy)
        text = query_text(query_type, q.txt, generated)
        merged.items_by_type[query_type.value] += 1
        rows.append(
            [
                q.qid,
                q.split,
                q.task_id,
                query_type.value,
                q.modality.value,
                q.txt,
                q.img_path,
                list(q.pos_cand_list),
                text,
                out.status,
                out.error,
                list(flags),
            ]
        )
        if query_type is not QueryType.TEXT and len(merged.samples) < n_samples:
            merged.samples.append((q.qid, q.txt or q.img_path, text))
    merged.frame = pd.DataFrame(rows, columns=QUERY_COLUMNS)
    return merged
