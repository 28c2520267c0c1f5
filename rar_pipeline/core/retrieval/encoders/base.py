"""The protocols every retriever encoder implements: items of any modality in, unit vectors out.

An item is a query or a candidate as the retriever sees it: text (original or enhanced),
an image, or both. Queries and candidates share one space: retrieval is a dot product.

`Encoder` is what index, search and evaluation need; `TrainableEncoder` adds what training
needs, split as sentence-transformers splits a model: `inputs` prepares a batch (cached
backbone features, token ids, pixels) outside autograd, `forward` embeds it with gradients.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rar_pipeline.core.retrieval.options import TRAINED

ENCODER_CONFIG = "encoder.json"  # every saved encoder: {"encoder": name, ...its settings}


def check_trained(trained: str) -> None:
    """Raise ValueError unless `trained` is one of `TRAINED`."""
    if trained not in TRAINED:
        raise ValueError(f"trained must be one of {', '.join(TRAINED)}, not {trained!r}")


def save_config(directory: Path, config: dict[str, Any]) -> None:
    """`config` (a `TrainableEncoder.config`) as the folder's `ENCODER_CONFIG`."""
    (Path(directory) / ENCODER_CONFIG).write_text(json.dumps(config, indent=2))


def saved_settings(directory: Path) -> dict[str, Any]:
    """The settings a saved encoder was built with: its `ENCODER_CONFIG` less the name."""
    config = json.loads((Path(directory) / ENCODER_CONFIG).read_text())
    config.pop("encoder")
    return config


@dataclass(frozen=True)
class EncodeItem:
    """What the encoder embeds for one query or candidate (at least one of the two)."""

    txt: str | None
    image_path: Path | None = None

    def __post_init__(self) -> None:
        if not self.txt and self.image_path is None:
            raise ValueError("an item needs text or an image")


@runtime_checkable
class Encoder(Protocol):
    """A retriever encoder."""

    @property
    def name(self) -> str:
        """The backbone family: offline, clip, vlm-embed."""
        ...

    @property
    def dim(self) -> int:
        """Size of the embeddings."""
        ...

    def embed(self, items: Sequence[EncodeItem]) -> np.ndarray:
        """(len(items), dim) float32 rows of unit length, in item order."""
        ...


@runtime_checkable
class TrainableEncoder(Encoder, Protocol):
    """An encoder the contrastive trainer can update, save and reload.

    Attributes:
        module: a `torch.nn.Module` holding every parameter `trained` names (and only
            those require grad); the trainer's optimiser takes `module.parameters()` that
            require grad, and calls `module.train()` / `module.eval()`.
        trained: heads | full | lora.
    """

    module: Any
    trained: str

    def inputs(self, items: Sequence[EncodeItem]) -> Any:
        """A batch prepared for `forward` (no gradients needed to build it)."""
        ...

    def forward(self, inputs: Any) -> Any:
        """(n, dim) unit-length embeddings as a tensor with gradients."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-able settings that rebuild this encoder's shape; "encoder" names it."""
        ...

    def save(self, directory: Path) -> None:
        """Safetensors weights and `ENCODER_CONFIG` in `directory`: no pickle."""
        ...


def embed_in_eval(encoder: TrainableEncoder, items: Sequence[EncodeItem]) -> np.ndarray:
    """`encoder.embed` for every trainable encoder: eval mode (no dropout), no autograd.

    Each submodule's train/eval mode is put back afterwards, whatever the trainer had set.
    """
    import torch

    if not items:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    modes = [(m, m.training) for m in encoder.module.modules()]
    encoder.module.eval()
    try:
        with torch.inference_mode():
            return encoder.forward(encoder.inputs(items)).cpu().numpy().astype(np.float32)
    finally:
        for module, training in modes:
            module.training = training
