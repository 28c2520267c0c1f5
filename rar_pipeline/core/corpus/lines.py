"""Read a JSON-lines file in validated chunks: decoding, parsing, duplicate ids.

The readers in `readers.py` give `scan_rows` a parser per row kind; everything here is the
same for every kind. A bad line never raises: it becomes a `QuarantinedRow` (source file,
line number, reason, the raw line cut to `RAW_LIMIT` characters) and reading goes on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rar_pipeline.core.corpus.fields import RowError
from rar_pipeline.core.corpus.mbeir import source_name
from rar_pipeline.core.corpus.records import QuarantinedRow, ReadResult, Reason

T = TypeVar("T")
RAW_LIMIT = 500  # characters of a bad line kept in its quarantine record
CHUNK_LINES = 100_000  # lines validated per chunk by the streaming readers
BOM = b"\xef\xbb\xbf"


def text_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """Yield (line_no, text, error) for every non-blank line, decoded as strict UTF-8.

    A byte-order mark at the start of the file is dropped. A line that is not valid UTF-8
    comes with an error (its text decoded with replacement characters, for the record):
    silently replacing bytes could make two different ids collide.
    """
    with path.open("rb") as fh:
        for line_no, data in enumerate(fh, start=1):
            if line_no == 1 and data.startswith(BOM):
                data = data[len(BOM) :]
            try:
                text, error = data.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                text = data.decode("utf-8", errors="replace")
                error = f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
            if text.strip():
                yield line_no, text, error


def iter_json_lines(
    path: Path,
) -> Iterator[tuple[int, str, dict[str, Any] | None, Reason | None, str]]:
    """Yield (line_no, raw, obj, reason, detail) for every non-blank line."""
    for line_no, raw, error in text_lines(path):
        if error is not None:
            yield line_no, raw, None, Reason.BAD_ENCODING, error
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line_no, raw, None, Reason.BAD_JSON, f"bad JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(obj, dict):
            detail = f"expected a JSON object, got {type(obj).__name__}"
            yield line_no, raw, None, Reason.NOT_AN_OBJECT, detail
            continue
        yield line_no, raw, obj, None, ""


def quarantined_row(
    source: str, line_no: int, raw: str, reason: Reason, detail: str, row_id: str | None
) -> QuarantinedRow:
    """The quarantine record of one bad line of `source` (its raw text cut to RAW_LIMIT)."""
    return QuarantinedRow(
        source=source,
        line=line_no,
        row_id=row_id,
        reason=reason,
        detail=detail,
        raw=raw.rstrip("\n")[:RAW_LIMIT],
    )


class SeenIds:
    """Which ids a file has defined so far, and on which line: compact at millions of ids.

    The latest ids sit in a dict; every `FREEZE` of them move into sorted numpy arrays of
    their 128-bit blake2b digests and line numbers (24 bytes an id, where a dict of strings
    takes ~130). Two different ids share a digest with probability ~n^2 / 2^129.
    """

    FREEZE = 100_000

    def __init__(self) -> None:
        self._recent: dict[str, int] = {}
        self._digests = np.empty(0, dtype="S16")
        self._lines = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._recent) + len(self._digests)

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def first_lines(self, keys: Sequence[str]) -> list[int | None]:
        """For each key, the line that defined it earlier (None: new); does not add them."""
        found: list[int | None] = [self._recent.get(k) for k in keys]
        if len(self._digests):
            probe = np.array([self._digest(k) for k in keys], dtype="S16")
            at = np.minimum(np.searchsorted(self._digests, probe), len(self._digests) - 1)
            hit = self._digests[at] == probe
            for i in np.flatnonzero(hit):
                found[i] = int(self._lines[at[i]])
        return found

    def add(self, key: str, line: int) -> None:
        self._recent[key] = line
        if len(self._recent) >= self.FREEZE:
            self._freeze()

    def _freeze(self) -> None:
        digests = np.array([self._digest(k) for k in self._recent], dtype="S16")
        lines = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
        order = np.argsort(digests, kind="stable")
        digests, lines = digests[order], lines[order]
        at = np.searchsorted(self._digests, digests)
        self._digests = np.insert(self._digests, at, digests)
        self._lines = np.insert(self._lines, at, lines)
        self._recent = {}


def scan_rows(
    path: Path,
    root: Path,
    parse: Callable[[dict[str, Any]], T],
    row_id: Callable[[T], str],
    raw_id: Callable[[dict[str, Any]], str | None],
    progress: Callable[[int], None] | None,
    chunk_lines: int = CHUNK_LINES,
) -> Iterator[ReadResult[T]]:
    """Validate a file `chunk_lines` lines at a time: one `ReadResult` per chunk, in order.

    Only the ids seen so far (`SeenIds`) outlive a chunk: a repeated id is quarantined
    wherever its first definition was.
    """
    source = source_name(path, root)
    seen = SeenIds()
    parsed: list[tuple[int, str, T]] = []
    quarantined: list[QuarantinedRow] = []

    def flush() -> ReadResult[T]:
        keys = [row_id(row) for _, _, row in parsed]
        earlier = seen.first_lines(keys)
        rows: list[T] = []
        bad = list(quarantined)
        local: dict[str, int] = {}  # this chunk's ids: `earlier` knows only the others'
        for (line_no, raw, row), key, first in zip(parsed, keys, earlier, strict=True):
            first = first if first is not None else local.get(key)
            if first is None:
                local[key] = line_no
                seen.add(key, line_no)
                rows.append(row)
                continue
            detail = f"id {key!r} already defined on line {first}"
            bad.append(quarantined_row(source, line_no, raw, Reason.DUPLICATE_ID, detail, key))
        bad.sort(key=lambda q: q.line)
        parsed.clear()
        quarantined.clear()
        return ReadResult(rows=rows, quarantined=bad)

    for line_no, raw, obj, reason, detail in iter_json_lines(path):
        if progress is not None:
            progress(1)
        if obj is None:
            assert reason is not None
            quarantined.append(quarantined_row(source, line_no, raw, reason, detail, None))
        else:
            rid = raw_id(obj)
            try:
                parsed.append((line_no, raw, parse(obj)))
            except RowError as exc:
                quarantined.append(
                    quarantined_row(source, line_no, raw, exc.reason, exc.detail, rid)
                )
        if len(parsed) + len(quarantined) >= chunk_lines:
            yield flush()
    if parsed or quarantined:
        yield flush()


def joined(chunks: Iterable[ReadResult[T]]) -> ReadResult[T]:
    """A whole file's rows and quarantined rows at once: its chunks (`scan_rows`) joined."""
    rows: list[T] = []
    quarantined: list[QuarantinedRow] = []
    for chunk in chunks:
        rows.extend(chunk.rows)
        quarantined.extend(chunk.quarantined)
    return ReadResult(rows=rows, quarantined=quarantined)
