"""A local working copy of a folder kept in object storage, pulled before a step, pushed after.

The pipeline's core reads and writes local files (Parquet tables, JSON lines, folders of
safetensors). Where the artifacts or the data root live in object storage
(`s3://bucket/prefix`), a step works on a local copy of them in the worker's own temporary
folder, and nothing else of the machine is used:

- `pull()` brings the copy up to date: one listing, then every remote file whose size or
  time differs from what this copy last fetched (`only` limits it to some folders: a
  data root's images are fetched one at a time, when opened);
- `fetch(path)` brings one file by its key, if the store has it (an image the step opens);
- `push()` uploads the files written or changed since the last pull, and removes the
  remote copies of files the step deleted.

Every file becomes one object whole or not at all: it is uploaded under a temporary key,
checked, and moved into place by the store (`_upload_file`); a reader sees the old object
or the new one, and a step killed mid-upload leaves the previous object in place. A
download goes to a temp file renamed into place. Transfers go through pyarrow's filesystems.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

STATE = ".rar-mirror.json"  # in the local copy: what was fetched, and the files as pulled
# beside the remote folder's files: uploads not yet moved into place (not in a folder of
# their own: pyarrow leaves a folder marker behind when the last file of a folder goes)
UPLOADS = ".rar-upload-"
_CHUNK = 1 << 20
_THREADS = 8


def _local_files(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Files under `root` but the state file and `skip`: relative path -> (size, mtime_ns)."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and path.name != STATE and rel.split("/", 1)[0] not in skip:
            found[rel] = _stat(path)
    return found


@dataclass
class Mirror:
    """A local copy (`local`) of the folder `remote` (a path on `filesystem`).

    Args:
        filesystem: the store's pyarrow filesystem.
        remote: the folder's path on it (`bucket/prefix`, no scheme).
        local: the local copy's folder (created if missing).
        skip: top-level folders left out, both ways (a database of their own, local caches).
        only: top-level folders `pull` brings (empty: all); the others are fetched file by
            file when opened (a data root's images).
    """

    filesystem: pafs.FileSystem
    remote: str
    local: Path
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    _fetched: dict[str, list[int]] = field(default_factory=dict)  # rel -> remote [size, mtime]
    _pulled: dict[str, tuple[int, int]] = field(default_factory=dict)  # local files as pulled

    def __post_init__(self) -> None:
        self.remote = self.remote.rstrip("/")
        self.local = Path(self.local)
        self.local.mkdir(parents=True, exist_ok=True)
        state = self.local / STATE
        if state.is_file():
            self._fetched = json.loads(state.read_text()).get("fetched", {})

    # -- what the store holds

    def _remote_files(self) -> dict[str, list[int]]:
        selector = pafs.FileSelector(self.remote, recursive=True, allow_not_found=True)
        found = {}
        for info in self.filesystem.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(self.remote) + 1 :]
            top = rel.split("/", 1)[0]
            if top.startswith(UPLOADS) or not self._pullable(rel) or rel.endswith("/"):
                continue
            found[rel] = [info.size, info.mtime_ns or 0]
        return found

    def _save_state(self) -> None:
        tmp = self.local / f".{STATE}.tmp"
        tmp.write_text(json.dumps({"remote": self.remote, "fetched": self._fetched}))
        os.replace(tmp, self.local / STATE)

    # -- in

    def _download(self, rel: str) -> None:
        target = self.local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                self.filesystem.open_input_stream(f"{self.remote}/{rel}") as source,
            ):
                shutil.copyfileobj(source, out, _CHUNK)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def pull(self) -> dict[str, int]:
        """Bring the copy up to date with the store; returns counts of what it did.

        Local files the store no longer has are removed (another step deleted them), unless
        this copy wrote them and has not pushed them yet.
        """
        remote = self._remote_files()
        stale = [rel for rel, info in remote.items()
                 if self._fetched.get(rel) != info or not (self.local / rel).is_file()]  # fmt: skip
        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(self._download, stale))
        gone = [rel for rel in self._fetched if rel not in remote and self._pullable(rel)]
        for rel in gone:
            (self.local / rel).unlink(missing_ok=True)
            del self._fetched[rel]
        self._fetched.update({rel: remote[rel] for rel in stale})
        self._save_state()
        self._pulled = _local_files(self.local, self.skip)
        return {"listed": len(remote), "fetched": len(stale), "removed": len(gone)}

    def _pullable(self, rel: str) -> bool:
        top = rel.split("/", 1)[0]
        return top not in self.skip and (not self.only or top in self.only)

    def fetch(self, path: Path) -> Path:
        """`path` (inside the copy), fetched first if the store has it and the copy does not.

        Returns `path` either way: a file the store lacks stays missing.
        """
        rel = Path(path).relative_to(self.local).as_posix()
        if rel not in self._fetched or not Path(path).is_file():
            info = self.filesystem.get_file_info(f"{self.remote}/{rel}")
            if info.type == pafs.FileType.File:
                self._download(rel)
                self._fetched[rel] = [info.size, info.mtime_ns or 0]
                self._pulled[rel] = _stat(Path(path))
        return Path(path)

    # -- out

    def changes(self) -> tuple[list[str], list[str]]:
        """(files written or changed, files deleted) in the copy since the last pull."""
        now = _local_files(self.local, self.skip)
        written = sorted(rel for rel, info in now.items() if self._pulled.get(rel) != info)
        deleted = sorted(rel for rel in self._pulled if rel not in now)
        return written, deleted

    def _upload(self, rel: str) -> list[int]:
        _upload_file(self.filesystem, self.local / rel, self.remote, rel)
        info = self.filesystem.get_file_info(f"{self.remote}/{rel}")
        return [info.size, info.mtime_ns or 0]

    def push(self) -> dict[str, int]:
        """Upload what the step wrote, remove what it deleted; returns counts."""
        written, deleted = self.changes()
        with ThreadPoolExecutor(_THREADS) as pool:
            infos = list(pool.map(self._upload, written))
        self._fetched.update(dict(zip(written, infos, strict=True)))
        for rel in deleted:
            self.filesystem.delete_file(f"{self.remote}/{rel}")
            self._fetched.pop(rel, None)
        self._save_state()
        self._pulled = _local_files(self.local, self.skip)
        return {"uploaded": len(written), "deleted": len(deleted)}


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def upload_tree(folder: Path, filesystem: pafs.FileSystem, remote: str) -> int:
    """Copy a local folder into the store, file by file (a corpus, before a cluster run)."""
    files = [p for p in Path(folder).rglob("*") if p.is_file() and p.name != STATE]
    remote = remote.rstrip("/")

    def send(path: Path) -> None:
        _upload_file(filesystem, path, remote, path.relative_to(folder).as_posix())

    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(send, files))
    return len(files)


def _upload_file(filesystem: pafs.FileSystem, source: Path, remote: str, rel: str) -> None:
    """One file to `<remote>/<rel>`, whole or not at all.

    It is uploaded under `<remote>/.rar-upload-<id>` first, its size checked, then moved into
    place by the store (a server-side copy): a failed or killed upload never leaves part
    of a file under the final key. (pyarrow completes an upload when its stream closes,
    even on an error, so writing to the final key directly would not be safe.)
    """
    tmp, target = f"{remote}/{UPLOADS}{uuid.uuid4().hex}", f"{remote}/{rel}"
    if filesystem.type_name == "local":  # object stores have no folders to make
        for folder in (tmp, target):
            filesystem.create_dir(folder.rsplit("/", 1)[0], recursive=True)
    try:
        with open(source, "rb") as data, filesystem.open_output_stream(tmp) as out:
            shutil.copyfileobj(data, out, _CHUNK)
        size = filesystem.get_file_info(tmp).size
        if size != source.stat().st_size:
            raise OSError(f"{source}: {size} of {source.stat().st_size} bytes reached the store")
        filesystem.move(tmp, target)
    finally:
        if filesystem.get_file_info(tmp).type == pafs.FileType.File:
            filesystem.delete_file(tmp)


# tries per S3 request: with the SDK's 3 s request timeout and its backoff, a request
# rides out about half a minute of an unreachable store before the step fails, naming it
S3_ATTEMPTS = 10


def filesystem_for(uri: str, endpoint_url: str = "", region: str = "") -> tuple[Any, str]:
    """The pyarrow filesystem and path of a URI (`s3://bucket/prefix` at `endpoint_url`)."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        options: dict[str, Any] = {
            "region": region or "us-east-1",
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
        }
        if endpoint_url:
            endpoint = urlparse(endpoint_url)
            options.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
        return pafs.S3FileSystem(**options), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.FileSystem.from_uri(uri)


# -- the local copies this process works on, so that a file opened by path is fetched

_MOUNTED: dict[Path, Mirror] = {}


@contextlib.contextmanager
def mounted(*copies: Mirror) -> Iterator[None]:
    """While inside, `ensure_local` fetches files under these copies from their stores."""
    for copy in copies:
        _MOUNTED[copy.local] = copy
    try:
        yield
    finally:
        for copy in copies:
            _MOUNTED.pop(copy.local, None)


def ensure_local(path: Path) -> Path:
    """`path`, fetched first when it lies in a mounted copy (`Mirror.fetch`)."""
    for root, copy in _MOUNTED.items():
        if Path(path).is_relative_to(root):
            return copy.fetch(path)
    return path
