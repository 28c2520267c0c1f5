"""Retriever checkpoints: safetensors and JSON only, every file's hash recorded and checked.

A checkpoint is a folder:

    checkpoint.json   what was trained, on which data (prompt and model versions), the
                      training options and results, and the sha256 of every weight file
    encoder/          the encoder as `TrainableEncoder.save` writes it

`read_checkpoint` (which `encoders.factory.load_encoder` calls) refuses a checkpoint whose
files do not match their recorded hashes (a truncated copy, a tampered file): nothing
unverified is ever loaded. `open_retriever` is how index, evaluation and search get a
config's retriever: its checkpoint, or the untrained base encoder where none was trained.

The trainer's resumable state (`TrainingState`) lives in a separate folder: the encoder as
last saved, the optimiser's tensors as safetensors, and the loop's position as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.files import file_hash, recover_dir, values_hash, write_dir_atomic
from rar_pipeline.core.retrieval.encoders.base import Encoder, TrainableEncoder
from rar_pipeline.core.retrieval.encoders.factory import load_encoder

CHECKPOINT_FILE = "checkpoint.json"
ENCODER_DIR = "encoder"
CHECKPOINT_FORMAT = 1
UNTRAINED = "untrained"  # a retriever reference's version where no checkpoint was trained


def is_untrained(reference: str) -> bool:
    """Whether a retriever reference ("<config>@<version>") names the untrained base."""
    return reference.endswith(f"@{UNTRAINED}")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its recorded hashes."""


def _hashes(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): file_hash(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def write_checkpoint(directory: Path, encoder: TrainableEncoder, info: dict[str, Any]) -> Path:
    """Save `encoder` and `info` as a checkpoint folder, atomically (old one kept until done)."""

    def write(tmp: Path) -> None:
        encoder.save(tmp / ENCODER_DIR)
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "encoder": encoder.config(),
            **info,
            "files": _hashes(tmp / ENCODER_DIR),
        }
        (tmp / CHECKPOINT_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))

    return write_dir_atomic(directory, write)


def read_checkpoint(directory: Path) -> dict[str, Any]:
    """The checkpoint's manifest, after checking every recorded file against its hash.

    Raises:
        CheckpointError: no checkpoint, a missing or extra file, or a hash mismatch.
    """
    directory = Path(directory)
    manifest_path = directory / CHECKPOINT_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint (no {CHECKPOINT_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path} is unreadable: {exc}") from exc
    actual = _hashes(directory / ENCODER_DIR) if (directory / ENCODER_DIR).is_dir() else {}
    if actual != recorded:
        missing = sorted(set(recorded) - set(actual))
        extra = sorted(set(actual) - set(recorded))
        changed = sorted(f for f in set(recorded) & set(actual) if recorded[f] != actual[f])
        raise CheckpointError(
            f"checkpoint {directory} does not match its recorded hashes "
            f"(changed: {changed}, missing: {missing}, unexpected: {extra}); refusing to load it"
        )
    return manifest


def open_retriever(
    directory: Path,
    config: str,
    base: Callable[[], Encoder],
    cache_dir: Path | CacheRoot | None = None,
) -> tuple[Encoder, str, dict[str, Any] | None]:
    """A config's trained retriever, or the untrained base one where none was trained.

    A corpus without a train split still gets indexes and an evaluation (of the base
    encoder, zero-shot); the reference says which it was.

    Returns:
        (encoder, reference "<config>@<hash of the checkpoint's files>" or
        "<config>@untrained", the checkpoint's manifest or None).

    Raises:
        CheckpointError: a checkpoint is there but damaged (never loaded), or its folder
            holds files but no manifest (a partial copy: never taken for "untrained").
    """
    directory = Path(directory)
    if not (directory / CHECKPOINT_FILE).is_file():
        if directory.is_dir() and any(directory.iterdir()):
            raise CheckpointError(f"{directory} has files but no {CHECKPOINT_FILE}")
        return base(), f"{config}@{UNTRAINED}", None
    manifest = read_checkpoint(directory)
    reference = f"{config}@{values_hash(sorted(manifest['files'].items()))[:12]}"
    return load_encoder(directory, cache_dir=cache_dir), reference, manifest


# -- resumable training state ---------------------------------------------------------------


@dataclass
class LoopPosition:
    """Where the training loop is, and what it has seen so far (JSON)."""

    signature: str  # options + data: a resumed run must match it
    epoch: int = 0
    batch: int = 0  # batches of `epoch` already done
    step: int = 0  # optimiser steps
    best_recall: float = -1.0
    best_epoch: int = -1
    bad_evals: int = 0
    stopped: str = ""  # why training ended, once it has
    history: list[dict[str, Any]] = field(default_factory=list)
    mined: dict[str, list[str]] = field(default_factory=dict)  # this epoch's mined negatives


def _tensors(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    # cloned: tied weights would share storage, which safetensors refuses to write
    return {f"{prefix}{k}": v.detach().clone().contiguous() for k, v in state.items()}


def save_state(
    directory: Path,
    weights: dict[str, Any],
    best: dict[str, Any] | None,
    optimizer: Any,
    extra: dict[str, Any],
    position: LoopPosition,
) -> None:
    """The trainer's full state, atomically, as safetensors and JSON.

    Args:
        directory: the state folder (replaced as a whole).
        weights: the encoder module's state dict now.
        best: its state dict at the best validation so far, if any.
        optimizer: the torch optimiser (its tensors and param groups are saved).
        extra: tensors the trainer owns besides the encoder (e.g. a learnable temperature).
        position: where the loop is.
    """
    import torch
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {
        f"state.{index}.{name}": value.detach().clone().contiguous()
        for index, values in opt["state"].items()
        for name, value in values.items()
    }
    tensors |= _tensors(extra, "extra.")
    tensors["extra.rng"] = torch.get_rng_state()

    def write(tmp: Path) -> None:
        save_file(_tensors(weights, ""), str(tmp / "encoder.safetensors"))
        if best is not None:
            save_file(_tensors(best, ""), str(tmp / "best.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"position": asdict(position), "param_groups": opt["param_groups"]}
        (tmp / "trainer.json").write_text(json.dumps(state))

    write_dir_atomic(directory, write)


@dataclass
class SavedState:
    """A trainer state read back."""

    weights: dict[str, Any]
    best: dict[str, Any] | None
    optimizer: dict[str, Any]
    extra: dict[str, Any]
    position: LoopPosition


def load_state(directory: Path) -> SavedState | None:
    """The trainer state saved in `directory`, or None when there is none.

    A crash between the two renames of a save is recovered (the previous state is used).
    """
    from safetensors.torch import load_file

    found = recover_dir(directory)
    if found is None or not (found / "trainer.json").is_file():
        return None
    state = json.loads((found / "trainer.json").read_text())
    per_param: dict[int, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    for key, value in load_file(str(found / "optimizer.safetensors")).items():
        kind, _, rest = key.partition(".")
        if kind == "state":
            index, _, name = rest.partition(".")
            per_param.setdefault(int(index), {})[name] = value
        else:
            extra[rest] = value
    best_file = found / "best.safetensors"
    return SavedState(
        weights=load_file(str(found / "encoder.safetensors")),
        best=load_file(str(best_file)) if best_file.is_file() else None,
        optimizer={"state": per_param, "param_groups": state["param_groups"]},
        extra=extra,
        position=LoopPosition(**state["position"]),
    )
