"""The M-BEIR (UniIR) data contract: where a corpus' files are, and how they are written.

Reading and validating rows is `core.corpus.readers`.

Layout (paths relative to the data root)::

    query/{train,val,test}/mbeir_<dataset>_task<k>_<split>.jsonl
    query/train/mbeir_<dataset>_train.jsonl                 (rows carry task_id)
    query/union_train/mbeir_union_up_train.jsonl, query/union_val/mbeir_union_val.jsonl
    cand_pool/local/mbeir_<dataset>_task<k>_cand_pool.jsonl
    cand_pool/global/mbeir_union_{train,val,test}_cand_pool.jsonl
    qrels/{val,test}/mbeir_<dataset>_task<k>_<split>_qrels.txt
    instructions/query_instructions.tsv
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rar_pipeline.core.corpus.records import Candidate, Qrel, Query
from rar_pipeline.core.mirror import ensure_local

# Test and val files name their task (mbeir_cirr_task7_test.jsonl); M-BEIR's training files
# do not (query/train/mbeir_cirr_train.jsonl, whose rows carry task_id, and UniIR's
# query/union_train/mbeir_union_up_train.jsonl): those are one partition per file, named
# without the split (mbeir_cirr, mbeir_union_up).
NO_TRAIN_SPLIT = (
    "no train split in this data root (no query/train/, query/union_train/ or *_train.jsonl "
    "files): the offline captioner learns nothing and training will have no pairs"
)
# the data contract's text folders under a data root (images may be anywhere else in it)
DATA_FOLDERS = ("cand_pool", "query", "qrels", "instructions")
_QUERY_FILE = re.compile(r"^mbeir_(?P<task>.+?)_(?P<split>train|val|test)\.jsonl$")
_QRELS_FILE = re.compile(r"^mbeir_(?P<task>.+_task\d+)_(?P<split>train|val|test)_qrels\.txt$")


class LayoutError(ValueError):
    """The data root does not look like an M-BEIR corpus."""


@dataclass(frozen=True)
class CorpusLayout:
    """The files of one corpus, keyed by the names partitions use.

    Attributes:
        root: the data root; every path inside data files is relative to it.
        pools: pool shard name (the file stem, e.g. ``mbeir_cirr_task7_cand_pool``) -> file.
        queries: task name (e.g. ``mbeir_cirr_task7``) -> split -> query file.
        qrels: task name -> split -> qrels file.
        instructions: the instructions TSV, when the corpus has one.
        skipped: paths named like data files that are not files, with why they were skipped.
    """

    root: Path
    pools: dict[str, Path] = field(default_factory=dict)
    queries: dict[str, dict[str, Path]] = field(default_factory=dict)
    qrels: dict[str, dict[str, Path]] = field(default_factory=dict)
    instructions: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def train_tasks(self) -> list[str]:
        """The query partitions that have a train split."""
        return sorted(t for t, splits in self.queries.items() if "train" in splits)

    def rel(self, path: Path) -> str:
        """`path` relative to the data root, as quarantine records name it."""
        return source_name(path, self.root)


def pool_file(root: Path, name: str, scope: str = "local") -> Path:
    """Where a pool file lives: cand_pool/<scope>/<name>.jsonl (scope: local or global)."""
    return Path(root) / "cand_pool" / scope / f"{name}.jsonl"


def query_file(root: Path, task: str, split: str) -> Path:
    """Where a task's query file for a split lives: query/<split>/<task>_<split>.jsonl."""
    return Path(root) / "query" / split / f"{task}_{split}.jsonl"


def qrels_file(root: Path, task: str, split: str) -> Path:
    """Where a task's qrels for a split live: qrels/<split>/<task>_<split>_qrels.txt."""
    return Path(root) / "qrels" / split / f"{task}_{split}_qrels.txt"


def qrels_missing_text(task: str, splits: list[str]) -> str:
    """The warning for a task whose evaluated splits have no qrels file."""
    files = ", ".join(source_name(qrels_file(Path("."), task, s), Path(".")) for s in splits)
    return (f"{task}: no qrels for its {' and '.join(splits)} split ({files} is missing or "
            "misnamed): its labels are taken from each query's pos_cand_list")  # fmt: skip


def instructions_file(root: Path) -> Path:
    """UniIR's per-task instructions: instructions/query_instructions.tsv."""
    return Path(root) / "instructions" / "query_instructions.tsv"


def source_name(path: Path, root: Path) -> str:
    """How quarantine records name a file: relative to the data root when inside it."""
    path = Path(path)
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def discover(root: str | os.PathLike[str]) -> CorpusLayout:
    """Find the pool, query, qrels and instruction files under an M-BEIR data root.

    Args:
        root: the data root.

    Returns:
        The corpus layout, with partition names as keys.

    Raises:
        LayoutError: if the root is missing, has no query or pool files, or two pool files
            share a stem (partition names must be unique).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise LayoutError(f"data root {root} is not a directory")
    skipped: dict[str, str] = {}

    def files(folder: str, pattern: str) -> list[Path]:
        found = []
        for path in sorted((root / folder).rglob(pattern)):
            if path.is_file():
                found.append(path)
            else:  # a folder (or FIFO, device) named like a data file: say so, read nothing
                skipped[source_name(path, root)] = "not a regular file"
        return found

    pools: dict[str, Path] = {}
    for path in files("cand_pool", "*.jsonl"):
        if path.stem in pools:
            raise LayoutError(
                f"two candidate pools are both named {path.stem!r}: {pools[path.stem]} and {path}"
            )
        pools[path.stem] = path
    queries: dict[str, dict[str, Path]] = {}
    for path in files("query", "*.jsonl"):
        m = _QUERY_FILE.match(path.name)
        if m:
            queries.setdefault(f"mbeir_{m['task']}", {})[m["split"]] = path
    qrels: dict[str, dict[str, Path]] = {}
    for path in files("qrels", "*.txt"):
        m = _QRELS_FILE.match(path.name)
        if m:
            qrels.setdefault(f"mbeir_{m['task']}", {})[m["split"]] = path
        else:  # read as no qrels at all: evaluation would fall back without a word
            skipped[source_name(path, root)] = (
                "not named like M-BEIR qrels (mbeir_<dataset>_task<k>_<split>_qrels.txt): not read"
            )
    if not pools or not queries:
        raise LayoutError(
            f"{root} has no M-BEIR files: expected query/<split>/mbeir_*_task<k>_<split>.jsonl "
            "and cand_pool/**/*.jsonl"
        )
    instructions = instructions_file(root)
    return CorpusLayout(
        root=root,
        pools=pools,
        queries=queries,
        qrels=qrels,
        instructions=instructions if instructions.is_file() else None,
        skipped=skipped,
    )


def resolve_in_root(root: Path, rel_path: str, *, strict: bool = False) -> Path:
    """Join a path from a data file to the data root, refusing any that leave it.

    The check is lexical: absolute paths and `..` that climb above the root are refused.
    Symlinks placed inside the root by whoever set it up (an image folder on another disk,
    say) are followed, since they are not data-file content. With `strict`, symlinks are
    resolved too and the real file must lie inside the real root (for roots that
    untrusted people can write to).

    Where the data root is a local copy of one in object storage (`core.mirror`), the image
    is fetched by its key first.

    Raises:
        ValueError: if the path is absolute or escapes the root.
    """
    if not rel_path or rel_path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel_path):
        raise ValueError(f"image path {rel_path!r} is absolute or empty")
    if "\x00" in rel_path:
        raise ValueError(f"image path {rel_path!r} has a NUL byte")
    normalized = os.path.normpath(rel_path)
    if normalized == ".." or normalized.startswith(".." + os.sep) or normalized == ".":
        raise ValueError(f"image path {rel_path!r} leaves the data root")
    path = root / normalized
    if strict and not path.resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"image path {rel_path!r} leaves the data root through a symlink")
    return ensure_local(path)  # a data root in object storage: the image, fetched by key


# ---------------------------------------------------------------------------
# writers (used by the demo builder and by tests that write corpora by hand)


def candidate_to_json(c: Candidate) -> dict[str, Any]:
    """The M-BEIR JSON object for a candidate."""
    return {
        "txt": c.txt,
        "img_path": c.img_path,
        "modality": c.modality.value,
        "did": c.did,
        "src_content": c.src_content,
    }


def query_to_json(q: Query) -> dict[str, Any]:
    """The M-BEIR JSON object for a query."""
    return {
        "qid": q.qid,
        "query_txt": q.txt,
        "query_img_path": q.img_path,
        "query_modality": q.modality.value,
        "query_src_content": q.src_content,
        "pos_cand_list": list(q.pos_cand_list),
        "neg_cand_list": list(q.neg_cand_list),
        "task_id": q.task_id,
    }


def write_jsonl(path: Path, objects: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for obj in objects:
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_qrels(path: Path, qrels: Iterable[Qrel]) -> int:
    """Write qrels as `qid 0 did relevance task_id` lines; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for r in qrels:
            fh.write(f"{r.qid} 0 {r.did} {r.relevance} {r.task_id}\n")
            n += 1
    return n


def qrels_from_queries(queries: Iterable[Query]) -> list[Qrel]:
    """The qrels UniIR writes for a query file: one relevance-1 line per positive."""
    return [
        Qrel(qid=q.qid, did=did, relevance=1, task_id=q.task_id or 0)
        for q in queries
        for did in q.pos_cand_list
    ]
