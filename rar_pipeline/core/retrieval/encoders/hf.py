"""Helpers for Hugging Face backbones (clip, vlm-embed): outputs, LoRA targets, seeds, dtypes."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

BACKBONE_DIR = "backbone"  # trained="full": the whole backbone, save_pretrained
ADAPTER_DIR = "adapter"  # trained="lora": the peft adapter, save_pretrained


def model_output_tensor(output: Any) -> Any:
    """The feature tensor of a `get_*_features` call (a ModelOutput in transformers 5)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"no features in {type(output).__name__}")
    return pooled


def linear_names(model: Any, skip: Sequence[str] = ()) -> list[str]:
    """Names of the `torch.nn.Linear` layers of `model` that LoRA can adapt.

    Less those under any `skip` prefix, and the `out_proj` of a `torch.nn.MultiheadAttention`
    (SigLIP's pooling head): that module reads the weight directly, bypassing an adapter.
    """
    import torch

    modules = dict(model.named_modules())
    skip = (*skip, *(n for n, m in modules.items() if isinstance(m, torch.nn.MultiheadAttention)))
    return [
        name
        for name, layer in modules.items()
        if isinstance(layer, torch.nn.Linear)
        and not any(name == s or name.startswith(f"{s}.") for s in skip)
    ]


@contextmanager
def seeded(seed: int) -> Any:
    """Seed torch's global generator inside the block, restoring it afterwards.

    Peft initialises LoRA matrices from the global generator: seeding it makes the same
    seed build the same encoder.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def torch_dtype(name: str) -> Any:
    """`torch.float32` for "float32" and so on."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype
