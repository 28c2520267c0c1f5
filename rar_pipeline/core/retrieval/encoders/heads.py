"""Projection heads: the trainable linear maps every encoder puts on its backbone features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEADS_FILE = "heads.safetensors"


def projection(in_dim: int, out_dim: int, generator: Any) -> Any:
    """A bias-free linear head, initialised N(0, 1/in_dim) from `generator` (seeded)."""
    import torch

    layer = torch.nn.Linear(in_dim, out_dim, bias=False)
    torch.nn.init.normal_(layer.weight, std=in_dim**-0.5, generator=generator)
    return layer


def save_heads(heads: Any, directory: Path, file: str = HEADS_FILE) -> None:
    """The heads' weights (a `torch.nn.ModuleDict`'s state dict) as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    save_file(state, str(directory / file))


def load_heads(heads: Any, directory: Path, file: str = HEADS_FILE) -> None:
    """Weights saved by `save_heads` into `heads`."""
    from safetensors.torch import load_file

    heads.load_state_dict(load_file(str(directory / file)))
