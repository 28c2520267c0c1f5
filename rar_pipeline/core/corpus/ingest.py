"""Validate a corpus' files into clean Parquet tables plus quarantine files.

These are the pure steps behind the `candidate_pool` and `queries` assets and behind
`rar validate`: one pool shard or one query task at a time, so a run can be partitioned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from rar_pipeline.core.corpus.images import ImageCheck
from rar_pipeline.core.corpus.lines import CHUNK_LINES
from rar_pipeline.core.corpus.mbeir import CorpusLayout
from rar_pipeline.core.corpus.readers import (
    KnownCandidates,
    iter_candidates,
    read_qrels,
    read_queries,
    read_task_instructions,
)
from rar_pipeline.core.corpus.records import (
    Candidate,
    Qrel,
    QuarantinedRow,
    Query,
    ReadResult,
    task_id_of,
)
from rar_pipeline.core.corpus.tables import (
    iter_parquet_batches,
    read_quarantine,
    records_to_frame,
    summarize,
    summarize_counts,
    write_dropped,
    write_parquet,
    write_parquet_chunks,
    write_quarantine,
)
from rar_pipeline.core.files import files_hash, values_hash
from rar_pipeline.core.layout import ArtifactLayout

# Bump when validation rules change: it is part of the assets' code_version.
READER_VERSION = "mbeir-reader-1"


class MissingUpstreamError(RuntimeError):
    """A step needs outputs of another step that have not been produced yet."""


@dataclass
class IngestReport:
    """What one ingest step read, kept, quarantined and wrote.

    `ids` are the kept rows' ids. A pool shard written to Parquet does not hold them (at
    millions of rows they would be the biggest thing in memory): they are read back from
    the output's id column when asked for.
    """

    key: str
    sources: list[str]
    summary: dict[str, Any]
    quarantined: list[QuarantinedRow]
    output: Path | None
    quarantine_file: Path | None
    data_version: str
    preview: pd.DataFrame
    kept_ids: list[str] | None = None  # ids of the rows kept, when held in memory
    extra: dict[str, Any] = field(default_factory=dict)
    id_column: str = "did"

    @property
    def ids(self) -> list[str]:
        """Ids of the rows kept, in file order."""
        if self.kept_ids is not None:
            return self.kept_ids
        if self.output is None:
            return []
        ids = pq.read_table(self.output, columns=[self.id_column]).column(0)
        return ids.to_pylist()


def file_digest(paths: Iterable[Path]) -> str:
    """The data version of an ingest step: a hash of its files and the reader version."""
    return files_hash(paths, salt=READER_VERSION)


def _bar(desc: str, enabled: bool) -> tqdm:
    # disable=None: draw only on a terminal, never into captured logs
    return tqdm(
        desc=desc, unit=" rows", disable=None if enabled else True, mininterval=1.0, leave=False
    )


def ingest_pool(
    layout: CorpusLayout,
    shard: str,
    artifacts: ArtifactLayout | None,
    *,
    image_check: ImageCheck | None = None,
    progress: bool = False,
    chunk_rows: int = CHUNK_LINES,
) -> IngestReport:
    """Validate one candidate pool shard and (when `artifacts` is given) write its outputs.

    The shard streams through in chunks of `chunk_rows` lines: each chunk's valid rows are
    appended to the Parquet output (written atomically), so memory holds one chunk, the
    ids seen so far (compactly, to catch duplicates) and the quarantined rows, never the
    shard. The outputs do not depend on `chunk_rows`.

    Args:
        layout: the corpus.
        shard: a key of `layout.pools`.
        artifacts: where to write `candidate_pool/<shard>.parquet` and the quarantine file;
            None validates without writing (the report then holds the kept ids and their
            content hashes, which `validate_corpus` checks queries against).
        image_check: how hard to look at images.
        progress: show a progress bar.
        chunk_rows: lines validated and written at a time.

    Returns:
        The report; its summary has rows, quarantined, rates and per-modality counts.
    """
    if shard not in layout.pools:
        raise KeyError(f"no pool shard {shard!r} in {layout.root}; have {sorted(layout.pools)}")
    path = layout.pools[shard]
    in_memory = artifacts is None
    scan = _PoolScan(in_memory)
    output = quarantine_file = None
    with _bar(shard, progress) as bar:
        chunks = iter_candidates(
            path, layout.root, image_check=image_check, progress=bar.update, chunk_lines=chunk_rows
        )
        if artifacts is None:
            for _ in scan.frames(chunks):
                pass
        else:
            output = write_parquet_chunks(scan.frames(chunks), artifacts.pool(shard))
    if artifacts is not None:
        quarantine_file = write_quarantine(
            scan.quarantined, artifacts.quarantine("candidate_pool", shard)
        )
    return IngestReport(
        key=shard,
        sources=[layout.rel(path)],
        summary=summarize_counts(scan.kept, scan.by_modality, scan.quarantined),
        quarantined=scan.quarantined,
        output=output,
        quarantine_file=quarantine_file,
        data_version=file_digest([path]),
        preview=scan.head(),
        kept_ids=scan.ids if in_memory else None,
        extra={"content_hashes": scan.hashes} if in_memory else {},
    )


@dataclass
class _PoolScan:
    """What streaming a pool shard keeps besides its rows (which go to the output).

    Attributes:
        in_memory: validating without writing: keep the ids and content hashes too.
        filled: columns with a value in some row (pandas types them so).
    """

    in_memory: bool
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    by_modality: Counter = field(default_factory=Counter)
    kept: int = 0
    preview: list[pd.DataFrame] = field(default_factory=list)
    filled: set[str] = field(default_factory=set)
    ids: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)

    def frames(self, chunks: Iterable[ReadResult[Candidate]]) -> Iterator[pd.DataFrame]:
        """Each chunk's valid rows as a frame, counted as they pass."""
        for chunk in chunks:
            self.quarantined.extend(chunk.quarantined)
            self.kept += len(chunk.rows)
            self.by_modality.update(c.modality for c in chunk.rows)
            frame = records_to_frame(chunk.rows, Candidate)
            if sum(len(p) for p in self.preview) < 5:
                self.preview.append(frame.head(5).astype(object))
            self.filled.update(c for c in frame.columns if frame[c].notna().any())
            if self.in_memory:
                self.ids.extend(c.did for c in chunk.rows)
                self.hashes.extend(_content_hashes(frame) if len(frame) else [])
            yield frame
        yield records_to_frame([], Candidate)  # the schema, for a shard without valid rows

    def head(self) -> pd.DataFrame:
        """The first 5 rows as `frame.head(5)` of the whole shard's frame would hold them.

        pandas types a column by all its rows: one with a string anywhere holds NaN for a
        missing value, one without holds None. A stand-in last row carries that to the head.
        """
        columns = [f.name for f in fields(Candidate)]
        rows = [row for head in self.preview for row in head.values.tolist()][:5]
        if not rows:
            return records_to_frame([], Candidate)
        stand_in = ["x" if c in self.filled else None for c in columns]
        return pd.DataFrame([*rows, stand_in], columns=columns).iloc[:-1]


def known_candidate_ids(
    artifacts: ArtifactLayout, shards: Iterable[str], *, batch_rows: int = CHUNK_LINES
) -> KnownCandidates:
    """Every valid candidate id across the given pool shards' outputs, and the quarantined.

    Read in batches of `batch_rows` rows: memory holds the set of ids, and content hashes
    only of the ids that more than one shard defines (to find conflicts), never the rows.

    Raises:
        MissingUpstreamError: naming the shards whose output does not exist yet.
    """
    shards = list(shards)
    missing = [s for s in shards if not artifacts.pool(s).is_file()]
    if missing:
        raise MissingUpstreamError(
            "candidate_pool has not been materialized for: " + ", ".join(missing)
        )
    valid: set[str] = set()
    shared: set[str] = set()  # ids in more than one shard
    quarantined: list[QuarantinedRow] = []
    for shard in shards:
        for batch in _batches(artifacts.pool(shard), ["did"], batch_rows):
            for did in batch.column(0).to_pylist():
                (shared if did in valid else valid).add(did)
        quarantined += read_quarantine(artifacts.quarantine("candidate_pool", shard))
    content: dict[str, dict[str, list[str]]] = {}  # shared did -> content hash -> shards
    for shard in shards if shared else ():
        for batch in _batches(artifacts.pool(shard), list(_CONTENT), batch_rows):
            frame = batch.to_pandas()
            chosen = frame["did"].isin(shared).to_numpy()
            if not chosen.any():
                continue
            frame = frame[chosen]
            for did, digest in zip(frame["did"], _content_hashes(frame), strict=True):
                content.setdefault(did, {}).setdefault(digest, []).append(shard)
    return KnownCandidates.of(valid, quarantined, _conflicts(content))


def _batches(path: Path, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    yield from iter_parquet_batches(path, rows, columns)


_CONTENT = ("did", "modality", "txt", "img_path")


def _content_hashes(frame: pd.DataFrame) -> list[str]:
    """One hash per row of what a candidate is: its modality, text and image path."""
    rows = frame[list(_CONTENT[1:])].astype(object)
    rows = rows.where(rows.notna(), None)
    return [values_hash(row) for row in rows.itertuples(index=False, name=None)]


def _conflicts(content: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    return {
        did: sorted(s for shards in by_hash.values() for s in shards)
        for did, by_hash in content.items()
        if len(by_hash) > 1
    }


def ingest_queries(
    layout: CorpusLayout,
    task: str,
    artifacts: ArtifactLayout | None,
    *,
    known_dids: KnownCandidates | set[str] | None,
    image_check: ImageCheck | None = None,
    progress: bool = False,
) -> IngestReport:
    """Validate every split of one query task, plus its qrels, and write the outputs.

    Args:
        layout: the corpus.
        task: a key of `layout.queries` (e.g. ``mbeir_cirr_task7``).
        artifacts: where to write `queries/<task>.parquet`, `qrels/<task>.parquet` and the
            quarantine file; None validates without writing.
        known_dids: every valid candidate id (see `known_candidate_ids`); None skips the
            reference check.
        image_check: how hard to look at images.
        progress: show a progress bar.

    Returns:
        The report; `extra` holds per-split counts, qrels counts and matching instructions.
    """
    if task not in layout.queries:
        raise KeyError(f"no query task {task!r} in {layout.root}; have {sorted(layout.queries)}")
    read, per_split = _read_splits(layout, task, known_dids, image_check, progress)
    qrels, qrels_summary = _read_task_qrels(layout, task, read, known_dids)
    # The instructions file is corpus-wide: its bad lines go to their own quarantine file
    # rather than being counted again against every task.
    instructions, bad_instructions = read_task_instructions(layout, task, read.rows)
    frame = records_to_frame(read.rows, Query)
    output = quarantine_file = None
    if artifacts is not None:
        output = write_parquet(frame, artifacts.queries(task))
        write_parquet(records_to_frame(qrels, Qrel), artifacts.qrels(task))
        quarantine_file = write_quarantine(read.quarantined, artifacts.quarantine("queries", task))
        write_dropped(read.dropped, artifacts.dropped_refs(task))
        if layout.instructions is not None:  # rewritten each time: a fixed line leaves it
            write_quarantine(bad_instructions, artifacts.quarantine("instructions", "instructions"))
    sources = [*layout.queries[task].values(), *layout.qrels.get(task, {}).values()]
    if layout.instructions is not None:  # its prompts are part of this task's output
        sources.append(layout.instructions)
    return IngestReport(
        key=task,
        sources=[layout.rel(p) for p in sources],
        summary=summarize(ReadResult(rows=read.rows, quarantined=read.quarantined)),
        quarantined=read.quarantined,
        output=output,
        quarantine_file=quarantine_file,
        data_version=file_digest(sorted(sources)),
        preview=frame.head(5),
        kept_ids=[q.qid for q in read.rows],
        id_column="qid",
        extra={
            "splits": per_split,
            "qrels": qrels_summary,
            "qrels_rows": len(qrels),
            # evaluated splits without a qrels file: their labels come from pos_cand_list
            "qrels_missing": [
                s for s in ("val", "test") if s in per_split and s not in qrels_summary
            ],
            "instructions": [list(i.prompts) for i in instructions],
            "instructions_quarantined": bad_instructions,
            **_reference_notes(read, known_dids),
        },
    )


def _read_splits(
    layout: CorpusLayout,
    task: str,
    known_dids: KnownCandidates | set[str] | None,
    image_check: ImageCheck | None,
    progress: bool,
) -> tuple[ReadResult[Query], dict[str, dict[str, Any]]]:
    """Every split's queries of a task, joined, and each split's summary."""
    read: ReadResult[Query] = ReadResult(rows=[], quarantined=[])
    per_split: dict[str, dict[str, Any]] = {}
    for split, path in sorted(layout.queries[task].items()):
        with _bar(f"{task}/{split}", progress) as bar:
            result = read_queries(
                path, layout.root, split=split, known_dids=known_dids,
                image_check=image_check, progress=bar.update,
            )  # fmt: skip
        read.rows.extend(result.rows)
        read.quarantined.extend(result.quarantined)
        read.dropped.extend(result.dropped)
        per_split[split] = summarize(result)
    return read, per_split


def _read_task_qrels(
    layout: CorpusLayout,
    task: str,
    read: ReadResult[Query],
    known_dids: KnownCandidates | set[str] | None,
) -> tuple[list[Qrel], dict[str, Any]]:
    """A task's qrels of every split (bad lines join `read.quarantined`), and summaries."""
    qrels: list[Qrel] = []
    summaries: dict[str, Any] = {}
    for split, path in sorted(layout.qrels.get(task, {}).items()):
        split_qids = {q.qid for q in read.rows if q.split == split}
        result = read_qrels(path, layout.root, known_qids=split_qids, known_dids=known_dids,
                            task_id=task_id_of(task))  # fmt: skip
        qrels.extend(result.rows)
        read.quarantined.extend(result.quarantined)
        summaries[split] = summarize(result, with_modality=False)
    return qrels, summaries


def _reference_notes(
    read: ReadResult[Query], known_dids: KnownCandidates | set[str] | None
) -> dict[str, Any]:
    """What a task's kept queries say about the corpus: lost, conflicting, repeated ids."""
    return {
        # references kept queries lost (unknown negatives; positives in no pool, while
        # another positive resolves): counted by side, listed in the dropped-refs file
        "dropped_refs": dict(Counter(d.side for d in read.dropped)),
        # positives that two pools define differently: which one gets indexed is undefined
        "conflicting_positives": sorted(
            {
                d
                for q in read.rows
                for d in q.pos_cand_list
                if isinstance(known_dids, KnownCandidates) and d in known_dids.conflicts
            }
        ),
        # kept apart by split (`Query.key`), but worth knowing: a leak risk upstream
        "qids_in_several_splits": sorted(
            qid for qid, n in Counter(q.qid for q in read.rows).items() if n > 1
        ),
    }


def validate_corpus(
    layout: CorpusLayout,
    *,
    tasks: Iterable[str] | None = None,
    image_check: ImageCheck | None = None,
    progress: bool = False,
) -> list[IngestReport]:
    """Validate a whole corpus without writing anything: every pool, then the queries.

    Args:
        layout: the corpus.
        tasks: which query tasks to validate (default: all).
        image_check: how hard to look at images.
        progress: show progress bars.

    Returns:
        One report per pool shard, then one per query task.
    """
    reports = [
        ingest_pool(layout, shard, None, image_check=image_check, progress=progress)
        for shard in layout.pools
    ]
    content: dict[str, dict[str, list[str]]] = {}
    for report in reports:
        for did, digest in zip(report.ids, report.extra["content_hashes"], strict=True):
            content.setdefault(did, {}).setdefault(digest, []).append(report.key)
    known = KnownCandidates.of(
        content, [q for r in reports for q in r.quarantined], _conflicts(content)
    )
    for task in layout.queries if tasks is None else tasks:
        reports.append(
            ingest_queries(
                layout, task, None, known_dids=known, image_check=image_check, progress=progress
            )
        )
    return reports
