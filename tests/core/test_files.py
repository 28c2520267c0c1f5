"""Atomic writes and content hashes shared by every stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from rar_pipeline.core.files import file_hash, files_hash, values_hash, write_atomic


def test_an_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path):
    target = tmp_path / "out" / "table.txt"
    write_atomic(target, lambda tmp: tmp.write_text("first"))
    with pytest.raises(RuntimeError):

        def broken(tmp: Path) -> None:
            tmp.write_text("half")
            raise RuntimeError("disk full")

        write_atomic(target, broken)
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["table.txt"]  # no temp files left


def test_file_hashes_follow_bytes_not_names(tmp_path: Path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 3_000_000)  # several read chunks
    b.write_bytes(b"x" * 3_000_000)
    assert file_hash(a) == file_hash(b) and len(file_hash(a)) == 64
    b.write_bytes(b"x" * 2_999_999 + b"y")
    assert file_hash(a) != file_hash(b)


def test_files_hash_covers_names_bytes_and_salt(tmp_path: Path):
    a = tmp_path / "a.jsonl"
    a.write_text("{}\n")
    base = files_hash([a])
    assert files_hash([a]) == base and len(base) == 16
    assert files_hash([a], salt="reader-2") != base
    a.write_text("{} \n")
    assert files_hash([a]) != base
    changed = files_hash([a])
    renamed = a.rename(tmp_path / "b.jsonl")
    assert files_hash([renamed]) != changed  # the name is part of what is hashed


def test_values_hash_separates_values():
    assert values_hash(["ab", "c"]) != values_hash(["a", "bc"])
    assert values_hash([None, 1]) == values_hash([None, 1])


def test_a_disk_that_fills_mid_parquet_write_leaves_the_previous_table(tmp_path, monkeypatch):
    import errno

    import pandas as pd

    from rar_pipeline.core.corpus.tables import write_parquet

    target = tmp_path / "captions" / "shard.parquet"
    old = pd.DataFrame({"did": ["a", "b"], "caption": ["red", "blue"]})
    write_parquet(old, target)
    big = pd.DataFrame({"did": [str(i) for i in range(5000)], "caption": ["x" * 40] * 5000})

    def full(frame, path, **kw):  # the disk fills after the first kilobyte
        Path(path).write_bytes(b"PAR1" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_parquet", full)
        with pytest.raises(OSError, match="No space left"):
            write_parquet(big, target)
    pd.testing.assert_frame_equal(pd.read_parquet(target), old)  # the old table, whole
    assert [p.name for p in target.parent.iterdir()] == ["shard.parquet"]  # no half file


def test_a_disk_that_fills_mid_checkpoint_leaves_the_previous_checkpoint(tmp_path):
    import errno

    from rar_pipeline.core.files import write_dir_atomic

    target = tmp_path / "checkpoints" / "full"
    write_dir_atomic(target, lambda d: (d / "weights.safetensors").write_bytes(b"old"))

    def full(folder: Path) -> None:
        (folder / "weights.safetensors").write_bytes(b"new, cut sh")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_dir_atomic(target, full)
    assert (target / "weights.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["full"]  # no temp folder
