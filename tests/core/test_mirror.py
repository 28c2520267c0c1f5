"""A local copy of a folder in a store: pulled before a step, pushed after, whole files only.

The store here is a local folder behind pyarrow's filesystem interface (fast); the same
`Mirror` on a real S3 server is `tests/stack/test_object_store.py`'s.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rar_pipeline.core.mirror import UPLOADS, Mirror, ensure_local, mounted, upload_tree

FS = pafs.LocalFileSystem()


def _store(tmp_path: Path, files: dict[str, bytes]) -> str:
    remote = tmp_path / "store" / "artifacts"
    for rel, data in files.items():
        (remote / rel).parent.mkdir(parents=True, exist_ok=True)
        (remote / rel).write_bytes(data)
    remote.mkdir(parents=True, exist_ok=True)
    return str(remote)


def _remote_files(remote: str) -> dict[str, bytes]:
    root = Path(remote)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}  # fmt: skip


def test_a_pull_brings_what_changed_and_drops_what_the_store_no_longer_has(tmp_path: Path):
    remote = _store(tmp_path, {"pool/a.parquet": b"a1", "pool/b.parquet": b"b1"})
    copy = Mirror(FS, remote, tmp_path / "copy")
    assert copy.pull() == {"listed": 2, "fetched": 2, "removed": 0}
    assert (tmp_path / "copy" / "pool" / "a.parquet").read_bytes() == b"a1"
    assert copy.pull()["fetched"] == 0  # nothing changed
    Path(remote, "pool", "a.parquet").write_bytes(b"a2-longer")
    Path(remote, "pool", "b.parquet").unlink()
    assert copy.pull() == {"listed": 1, "fetched": 1, "removed": 1}
    assert (tmp_path / "copy" / "pool" / "a.parquet").read_bytes() == b"a2-longer"
    assert not (tmp_path / "copy" / "pool" / "b.parquet").exists()


def test_a_new_process_knows_what_its_copy_already_holds(tmp_path: Path):
    remote = _store(tmp_path, {"t.parquet": b"x" * 100})
    Mirror(FS, remote, tmp_path / "copy").pull()
    assert Mirror(FS, remote, tmp_path / "copy").pull()["fetched"] == 0


def test_a_push_sends_what_the_step_wrote_and_removes_what_it_deleted(tmp_path: Path):
    remote = _store(tmp_path, {"keep.txt": b"k", "state/old.bin": b"o", "changed.txt": b"1"})
    copy = Mirror(FS, remote, tmp_path / "copy")
    copy.pull()
    (tmp_path / "copy" / "new" / "c.parquet").parent.mkdir()
    (tmp_path / "copy" / "new" / "c.parquet").write_bytes(b"new")
    (tmp_path / "copy" / "changed.txt").write_bytes(b"22")
    (tmp_path / "copy" / "state" / "old.bin").unlink()
    assert copy.changes() == (["changed.txt", "new/c.parquet"], ["state/old.bin"])
    assert copy.push() == {"uploaded": 2, "deleted": 1}
    assert _remote_files(remote) == {
        "keep.txt": b"k",
        "changed.txt": b"22",
        "new/c.parquet": b"new",
    }
    assert copy.changes() == ([], []) and copy.pull()["fetched"] == 0


def test_folders_left_out_are_neither_pulled_nor_pushed(tmp_path: Path):
    remote = _store(tmp_path, {"lancedb/t.lance": b"l", "pool/a.parquet": b"a"})
    copy = Mirror(FS, remote, tmp_path / "copy", skip=("lancedb", "cache"))
    copy.pull()
    assert not (tmp_path / "copy" / "lancedb").exists()
    (tmp_path / "copy" / "cache").mkdir()
    (tmp_path / "copy" / "cache" / "enhancements.sqlite").write_bytes(b"local only")
    assert copy.push()["uploaded"] == 0


def test_a_data_roots_images_come_one_at_a_time_when_opened(tmp_path: Path):
    remote = _store(
        tmp_path, {"query/q.jsonl": b"{}", "images/1.png": b"png1", "images/2.png": b"p2"}
    )
    copy = Mirror(FS, remote, tmp_path / "copy", only=("query",))
    assert copy.pull()["fetched"] == 1
    image = tmp_path / "copy" / "images" / "1.png"
    assert not image.exists()
    with mounted(copy):
        assert ensure_local(image).read_bytes() == b"png1"
        assert not ensure_local(tmp_path / "copy" / "images" / "absent.png").exists()
    assert not (tmp_path / "copy" / "images" / "2.png").exists()
    assert ensure_local(tmp_path / "copy" / "images" / "2.png").exists() is False  # unmounted
    assert copy.push()["uploaded"] == 0  # a fetched image is not the step's output


class _Interrupted(OSError):
    pass


def test_an_upload_that_fails_midway_leaves_the_old_object(tmp_path: Path, monkeypatch):
    remote = _store(tmp_path, {"t.parquet": b"old"})
    copy = Mirror(FS, remote, tmp_path / "copy")
    copy.pull()
    (tmp_path / "copy" / "t.parquet").write_bytes(b"new" * 1000)

    def broken_copy(source, target, length=0):  # the link drops after the first bytes
        target.write(source.read(10))
        raise _Interrupted("connection reset")

    monkeypatch.setattr("rar_pipeline.core.mirror.shutil.copyfileobj", broken_copy)
    with pytest.raises(_Interrupted):
        copy.push()
    assert _remote_files(remote) == {"t.parquet": b"old"}  # no part of the new file, no temp
    assert not list(Path(remote).glob(f"{UPLOADS}*"))


def test_a_corpus_folder_can_be_uploaded_whole(tmp_path: Path):
    corpus = tmp_path / "corpus"
    (corpus / "query").mkdir(parents=True)
    (corpus / "query" / "q.jsonl").write_bytes(b"{}")
    (corpus / "img.png").write_bytes(b"png")
    remote = tmp_path / "store" / "data" / "corpus"
    remote.mkdir(parents=True)
    assert upload_tree(corpus, FS, str(remote)) == 2
    assert _remote_files(str(remote)) == {"query/q.jsonl": b"{}", "img.png": b"png"}
