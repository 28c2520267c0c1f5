"""File primitives every stage shares: atomic writes and content hashes.

One word for one idea: a *hash* is a sha256 of content (bytes, texts, values), never of
ids or timestamps. `file_hash` is the full hex digest (cache keys, weight pins);
`files_hash` and `values_hash` are 16-hex short forms used as Dagster data versions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, then rename it into place.

    A reader never sees a half-written file, and a crash leaves no partial output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_dir_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_dir)` on a temp folder beside `path`, then swap it into place.

    The old folder is moved aside before the new one is renamed in, and removed after: a
    crash leaves either the old folder, the new one, or the old one at `<name>.old` (which
    `recover_dir` puts back), never a half-written folder at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = path.with_name(f".{path.name}.old")
    try:
        write(tmp)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def recover_dir(path: Path) -> Path | None:
    """`path` if it exists, else the previous version a crashed `write_dir_atomic` left."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        os.replace(old, path)
    return path if path.is_dir() else None


def _update_with_file(digest: Any, path: Path) -> None:
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)


def file_hash(path: Path) -> str:
    """Hex sha256 of a file's bytes.

    Raises:
        OSError: the path is not a regular file (reading a FIFO or a device would block).
    """
    if not Path(path).is_file():
        raise OSError(f"{path} is not a regular file")
    digest = hashlib.sha256()
    _update_with_file(digest, path)
    return digest.hexdigest()


def files_hash(paths: Iterable[Path], *, salt: str = "", relative_to: Path | None = None) -> str:
    """A short hash over several files' names and bytes (in the order given).

    Args:
        paths: the files.
        salt: mixed in first (e.g. a reader version, so a rule change changes the hash).
        relative_to: name each file by its path relative to this folder (default: its name).
    """
    digest = hashlib.sha256(salt.encode())
    for path in paths:
        name = Path(path).relative_to(relative_to).as_posix() if relative_to else Path(path).name
        digest.update(name.encode())
        _update_with_file(digest, path)
    return digest.hexdigest()[:16]


class ValuesHasher:
    """`values_hash` fed a value at a time: the same hash, without holding the values."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, values: Iterable[Any]) -> None:
        for value in values:
            self._digest.update(str(value).encode())
            self._digest.update(b"\0")

    def hexdigest(self) -> str:
        return self._digest.hexdigest()[:16]


def values_hash(values: Iterable[Any]) -> str:
    """A short hash of a sequence of values (their `str`), e.g. an output column."""
    hasher = ValuesHasher()
    hasher.update(values)
    return hasher.hexdigest()


class TextColumnHasher:
    """`values_hash(frame[column].tolist())` of a column of str-or-None values, streamed.

    pandas stores such a column as its string dtype, where a missing value reads back as
    NaN (hashed "nan"), unless no value is a string (object dtype, hashed "None"). Both
    are hashed until the end shows which the whole column would have been.
    """

    def __init__(self) -> None:
        self._as_nan, self._as_none = ValuesHasher(), ValuesHasher()
        self._any_text = False

    def update(self, values: Iterable[str | None]) -> None:
        values = list(values)
        self._any_text = self._any_text or any(v is not None for v in values)
        self._as_nan.update("nan" if v is None else v for v in values)
        self._as_none.update(values)

    def hexdigest(self) -> str:
        return (self._as_nan if self._any_text else self._as_none).hexdigest()
