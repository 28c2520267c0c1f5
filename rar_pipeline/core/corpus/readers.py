"""Read and validate the rows of an M-BEIR corpus' files.

Every reader streams its file line by line and never raises on a bad row: a row that fails
validation becomes a `QuarantinedRow` with its source file, line number and reason, and the
good rows go on. Only a missing or unreadable *file* raises.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rar_pipeline.core.corpus.fields import (
    CANDIDATE_FIELDS,
    QUERY_FIELDS,
    RowError,
    cand_refs,
    src_content,
)
from rar_pipeline.core.corpus.images import ImageCheck
from rar_pipeline.core.corpus.lines import (
    CHUNK_LINES,
    joined,
    quarantined_row,
    scan_rows,
    text_lines,
)
from rar_pipeline.core.corpus.mbeir import CorpusLayout, LayoutError, source_name
from rar_pipeline.core.corpus.records import (
    TASK_MODALITIES,
    Candidate,
    DroppedRef,
    Instruction,
    Qrel,
    QuarantinedRow,
    Query,
    ReadResult,
    Reason,
    normalize_modality,
    task_id_of,
)


@dataclass(frozen=True)
class KnownCandidates:
    """The candidate ids queries may point at, and why others are missing.

    Attributes:
        valid: every candidate id that passed validation, across all pools.
        quarantined: ids that were defined but quarantined -> "reason at source:line".
        conflicts: ids that pools define with different content -> the pools (which one a
            retriever would index is undefined: the corpus should be fixed).
    """

    valid: frozenset[str]
    quarantined: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)  # did -> shards that differ

    @classmethod
    def of(
        cls,
        valid: Collection[str],
        quarantined: Iterable[QuarantinedRow] = (),
        conflicts: dict[str, list[str]] | None = None,
    ) -> KnownCandidates:
        rows = {
            q.row_id: f"{q.reason.value} at {q.source}:{q.line}" for q in quarantined if q.row_id
        }
        missing = {k: v for k, v in rows.items() if k not in valid}
        return cls(frozenset(valid), missing, dict(conflicts or {}))

    def __contains__(self, did: object) -> bool:
        return did in self.valid

    def why_missing(self, did: str) -> str:
        """Why a referenced id is not a valid candidate."""
        if did in self.quarantined:
            return f"{did} was quarantined ({self.quarantined[did]})"
        return f"{did} is not in any pool"


def _missing(known: Collection[str] | KnownCandidates, did: str) -> str:
    return (
        known.why_missing(did)
        if isinstance(known, KnownCandidates)
        else f"{did} is not in any pool"
    )


def _str_id(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None


def _candidate_parser(root: Path, image_check: ImageCheck) -> Callable[[dict[str, Any]], Candidate]:
    def parse(obj: dict[str, Any]) -> Candidate:
        did, modality, txt, img_path = CANDIDATE_FIELDS.parse(obj)
        CANDIDATE_FIELDS.check_image(root, modality, img_path, image_check)
        return Candidate(
            did=did,
            modality=modality,
            txt=txt,
            img_path=img_path,
            src_content=src_content(obj.get("src_content")),
        )

    return parse


def iter_candidates(
    path: Path,
    root: Path,
    *,
    image_check: ImageCheck | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_lines: int = CHUNK_LINES,
) -> Iterator[ReadResult[Candidate]]:
    """Read and validate one candidate pool file, a chunk of `chunk_lines` lines at a time.

    Memory holds one chunk and the ids seen so far, not the file.

    Args:
        path: the pool JSONL file.
        root: the data root that `img_path` values are relative to.
        image_check: how hard to look at images (default: decode them fully).
        progress: called with 1 per line read, for progress bars.
        chunk_lines: lines validated per chunk (the rows, and their order, do not depend on it).

    Returns:
        Each chunk's valid candidates and quarantined rows. Duplicate `did`s after the first
        are quarantined.
    """
    parse = _candidate_parser(root, image_check or ImageCheck())
    return scan_rows(
        path, root, parse, lambda c: c.did, lambda o: _str_id(o, "did"), progress, chunk_lines
    )


def read_candidates(path: Path, root: Path, **options: Any) -> ReadResult[Candidate]:
    """A whole pool file at once: `iter_candidates`' chunks joined (same options)."""
    return joined(iter_candidates(path, root, **options))


def read_queries(
    path: Path,
    root: Path,
    *,
    split: str,
    known_dids: Collection[str] | KnownCandidates | None = None,
    image_check: ImageCheck | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReadResult[Query]:
    """Read and validate one query file.

    Args:
        path: the query JSONL file.
        root: the data root that `query_img_path` values are relative to.
        split: the split this file belongs to (train / val / test).
        known_dids: every valid candidate id (a `KnownCandidates` also says why the others
            are missing). References outside it are dropped and recorded in
            `ReadResult.dropped` (negatives always; positives while at least one resolves,
            as UniIR keeps INFOSEEK queries whose OVEN positives are in no pool); a query
            with no positive left is quarantined. None skips the check.
        image_check: how hard to look at images (default: decode them fully).
        progress: called with 1 per line read, for progress bars.

    Returns:
        Valid queries, quarantined rows, and the references dropped from kept queries.
    """
    image_check = image_check or ImageCheck()
    dropped: list[DroppedRef] = []

    def parse(obj: dict[str, Any]) -> Query:
        qid, modality, txt, img_path = QUERY_FIELDS.parse(obj)
        if "pos_cand_list" not in obj:
            raise RowError(Reason.MISSING_FIELD, "field 'pos_cand_list' is missing")
        positives = cand_refs(obj, "pos_cand_list")
        if not positives:
            raise RowError(Reason.MISSING_FIELD, "pos_cand_list is empty: nothing to retrieve")
        negatives = cand_refs(obj, "neg_cand_list")
        missing: list[DroppedRef] = []
        if known_dids is not None:
            missing = [
                DroppedRef(qid, side, d, _missing(known_dids, d))
                for side, refs in (("positive", positives), ("negative", negatives))
                for d in refs
                if d not in known_dids
            ]
            if {d.did for d in missing if d.side == "positive"} >= set(positives):
                reasons = [f"{d.side} {d.why}" for d in missing]
                more = f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""
                raise RowError(Reason.UNKNOWN_REFERENCE, "; ".join(reasons[:3]) + more)
            gone = {d.did for d in missing}
            positives = tuple(d for d in positives if d not in gone)
            negatives = tuple(d for d in negatives if d not in gone)
        task_id = obj.get("task_id")
        if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
            if isinstance(task_id, str) and task_id.isdigit():
                task_id = int(task_id)
            else:
                raise RowError(Reason.WRONG_TYPE, f"task_id should be an integer, got {task_id!r}")
        QUERY_FIELDS.check_image(root, modality, img_path, image_check)
        dropped.extend(missing)  # recorded only for a query that is kept
        return Query(
            qid=qid,
            modality=modality,
            txt=txt,
            img_path=img_path,
            pos_cand_list=positives,
            neg_cand_list=negatives,
            split=split,
            task_id=task_id,
            src_content=src_content(obj.get("query_src_content")),
        )

    result = joined(
        scan_rows(path, root, parse, lambda q: q.qid, lambda o: _str_id(o, "qid"), progress)
    )
    kept = {q.qid for q in result.rows}  # a duplicate row's references were never kept
    result.dropped = [d for d in dropped if d.qid in kept]
    return result


def read_qrels(
    path: Path,
    root: Path,
    *,
    known_qids: Collection[str] | None = None,
    known_dids: Collection[str] | None = None,
    task_id: int | None = None,
) -> ReadResult[Qrel]:
    """Read and validate a qrels file (`qid 0 did relevance task_id`, space separated).

    The 4-column form that IR toolkits ship (`qid 0 did relevance`) is accepted when
    `task_id` (from the file's name) says which task it is. Lines whose qid or did is
    unknown (when the known sets are given) are quarantined, and so are repeated pairs.
    """
    source = source_name(path, root)
    rows: list[Qrel] = []
    quarantined: list[QuarantinedRow] = []
    seen: dict[tuple[str, str], int] = {}

    def parse(parts: list[str]) -> Qrel:
        if len(parts) == 4 and task_id is not None:
            parts = [*parts, str(task_id)]
        if len(parts) != 5:
            raise RowError(
                Reason.BAD_QREL_LINE,
                f"expected 5 fields 'qid 0 did relevance task_id' (or 4 in a file named for "
                f"its task), got {len(parts)}",
            )
        qid, _, did, relevance, line_task = parts
        if not (relevance.lstrip("-").isdigit() and line_task.isdigit()):
            raise RowError(Reason.BAD_QREL_LINE, "relevance and task_id must be integers")
        problems = []
        if known_qids is not None and qid not in known_qids:
            problems.append(f"qid {qid!r} is not a valid query")
        if known_dids is not None and did not in known_dids:
            problems.append(f"did {_missing(known_dids, did)}")
        if problems:
            raise RowError(Reason.UNKNOWN_REFERENCE, "; ".join(problems))
        if (qid, did) in seen:
            raise RowError(
                Reason.DUPLICATE_ID, f"pair ({qid}, {did}) already on line {seen[(qid, did)]}"
            )
        return Qrel(qid=qid, did=did, relevance=int(relevance), task_id=int(line_task))

    for line_no, raw, error in text_lines(path):
        parts = raw.split()
        try:
            if error is not None:
                raise RowError(Reason.BAD_ENCODING, error)
            qrel = parse(parts)
        except RowError as exc:
            quarantined.append(
                quarantined_row(source, line_no, raw, exc.reason, exc.detail, parts[0])
            )
            continue
        seen[(qrel.qid, qrel.did)] = line_no
        rows.append(qrel)
    return ReadResult(rows=rows, quarantined=quarantined)


def read_instructions(path: Path, root: Path) -> ReadResult[Instruction]:
    """Read UniIR's `query_instructions.tsv`.

    The header is query_modality, cand_modality, dataset_name, dataset_id, then
    prompt_1..prompt_n; rows without a prompt are quarantined.
    """
    source = source_name(path, root)
    rows: list[Instruction] = []
    quarantined: list[QuarantinedRow] = []
    lines = text_lines(path)
    _, first, _ = next(lines, (1, "", None))
    header = first.rstrip("\r\n").split("\t")
    required = ["query_modality", "cand_modality", "dataset_name", "dataset_id"]
    if header[:4] != required:
        raise LayoutError(f"{source}: header should start with {required}, got {header[:4]}")
    for line_no, raw, error in lines:
        parts = raw.rstrip("\r\n").split("\t")
        prompts = tuple(p.strip() for p in parts[4:] if p.strip())
        if error is not None or len(parts) < 5 or not prompts:
            reason = Reason.BAD_ENCODING if error else Reason.BAD_INSTRUCTION_LINE
            detail = error or "expected 4 key columns and at least one prompt"
            quarantined.append(quarantined_row(source, line_no, raw, reason, detail, None))
            continue
        rows.append(Instruction(*(p.strip() for p in parts[:4]), prompts=prompts))
    return ReadResult(rows=rows, quarantined=quarantined)


def read_task_instructions(
    layout: CorpusLayout, task: str, queries: list[Query]
) -> tuple[list[Instruction], list[QuarantinedRow]]:
    """The instruction rows of a partition's datasets and modality pairs (UniIR's keying).

    A task partition (`mbeir_cirr_task7`) names its task; a training file without one
    (`mbeir_cirr_train.jsonl`, `mbeir_union_up_train.jsonl`) gets the instructions of every
    (dataset, task) its rows carry.
    """
    named = task_id_of(task)
    wanted = {
        (q.qid.split(":", 1)[0], TASK_MODALITIES[tid])
        for q in queries
        if (tid := named if named is not None else q.task_id) in TASK_MODALITIES
    }
    if layout.instructions is None or not wanted:
        return [], []
    result = read_instructions(layout.instructions, layout.root)
    matching = [
        i
        for i in result.rows
        if (
            i.dataset_id,
            (normalize_modality(i.query_modality), normalize_modality(i.cand_modality)),
        )
        in wanted
    ]
    return matching, result.quarantined
