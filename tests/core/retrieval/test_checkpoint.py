"""Checkpoints: safetensors and JSON only, reloaded exactly, refused when tampered or cut."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rar_pipeline.core.retrieval.checkpoint import (
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.retrieval.encoders.factory import create_encoder, load_encoder

ITEMS = [EncodeItem("a red circle"), EncodeItem("who makes the blue square?")]


@pytest.fixture
def saved(tmp_path):
    encoder = create_encoder("offline", dim=16, seed=1)
    info = {"config": "full", "versions": {"enhanced_corpus": "abc"}}
    return encoder, write_checkpoint(tmp_path / "ckpt", encoder, info)


def test_a_checkpoint_holds_its_encoder_its_info_and_the_hash_of_every_file(saved):
    encoder, path = saved
    manifest = read_checkpoint(path)
    assert manifest["config"] == "full" and manifest["encoder"]["encoder"] == "offline"
    assert set(manifest["files"]) == {"encoder.json", "projections.safetensors"}
    files = {p.suffix for p in path.rglob("*") if p.is_file()}
    assert files == {".json", ".safetensors"}  # no pickle anywhere
    assert np.array_equal(load_encoder(path).embed(ITEMS), encoder.embed(ITEMS))


@pytest.mark.parametrize("damage", ["truncate", "tamper", "delete", "add"])
def test_a_damaged_checkpoint_is_refused_before_anything_is_loaded(saved, damage):
    _, path = saved
    weights = path / "encoder" / "projections.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "tamper":
        raw = bytearray(weights.read_bytes())
        raw[-1] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif damage == "delete":
        weights.unlink()
    else:
        (path / "encoder" / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="does not match its recorded hashes"):
        load_encoder(path)


def test_a_folder_without_a_manifest_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="no saved encoder"):
        load_encoder(tmp_path / "x")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_checkpoint(tmp_path / "x")


def test_rewriting_a_checkpoint_replaces_it_whole(saved):
    _, path = saved
    other = create_encoder("offline", dim=8, seed=2)
    write_checkpoint(path, other, {"config": "none"})
    assert json.loads((path / "checkpoint.json").read_text())["config"] == "none"
    assert load_encoder(path).dim == 8
    assert not list(path.parent.glob(".ckpt.*"))  # no temp or old folder left behind
