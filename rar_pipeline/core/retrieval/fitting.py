"""The retriever checkpoint asset's step: train a config's retriever, or keep its checkpoint.

Training is seeded and deterministic, so a checkpoint trained with the same encoder
settings, options and data is exactly what a new run would produce: `reusable_checkpoint`
finds it (by the run signature recorded in its manifest) and the asset skips the GPU
hours. Any change in options or data trains afresh. Index, evaluation and search open the
result with `checkpoint.open_retriever`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rar_pipeline.core.retrieval.checkpoint import (
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from rar_pipeline.core.retrieval.data import TrainingData
from rar_pipeline.core.retrieval.encoders.base import TrainableEncoder
from rar_pipeline.core.retrieval.train import (
    Observer,
    TrainOptions,
    run_signature,
    train_retriever,
)


def reusable_checkpoint(
    directory: Path, encoder: TrainableEncoder, data: TrainingData, options: TrainOptions
) -> dict[str, Any] | None:
    """The manifest of the checkpoint in `directory` if it was trained on exactly this run.

    A missing, damaged or differently trained checkpoint gives None (train afresh).
    """
    try:
        manifest = read_checkpoint(directory)
    except (CheckpointError, OSError):
        return None
    return manifest if manifest.get("signature") == run_signature(encoder, data, options) else None


def fit_retriever(
    encoder: TrainableEncoder,
    data: TrainingData,
    options: TrainOptions,
    checkpoint_dir: Path,
    state_dir: Path,
    info: dict[str, Any],
    observe: Observer | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train `encoder` and write its checkpoint; returns the checkpoint's manifest.

    Args:
        encoder: a fresh encoder.
        data: the config's train and validation data.
        options: how to train.
        checkpoint_dir: where the checkpoint goes (replaced atomically).
        state_dir: the trainer's resumable state while it trains.
        info: what the manifest records besides the encoder and the results (config,
            corpus, params, data versions, tracking ids).
        observe: the trainer's observer (progress bar, metrics).
        log: one line per notable event.
    """
    result = train_retriever(encoder, data, options, state_dir, observe=observe, log=log)
    manifest = {
        **info,
        **result.summary(),
        "history": result.history,
        "signature": result.signature,
    }
    write_checkpoint(checkpoint_dir, result.encoder, manifest)
    return read_checkpoint(checkpoint_dir)
