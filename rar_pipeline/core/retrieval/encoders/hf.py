"""Hugging Face backbones: `HfEncoder`, the base clip and vlm-embed extend, and its helpers.

The helpers (feature outputs, LoRA targets, seeded init, dtypes) serve the offline encoder's
MiniLM too.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import numpy as np

from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.retrieval.encoders.base import (
    EncodeItem,
    check_trained,
    embed_in_eval,
    save_config,
    saved_settings,
)
from rar_pipeline.core.retrieval.encoders.heads import load_heads, projection, save_heads

BACKBONE_DIR = "backbone"  # trained="full": the whole backbone, save_pretrained
ADAPTER_DIR = "adapter"  # trained="lora": the peft adapter, save_pretrained
# What trained="lora" trains in the backbone: LoRA matrices and peft's trainable token rows.
ADAPTER_PARAMETERS = ("lora_", "trainable_tokens_delta")


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


class HfEncoder:
    """A Hugging Face backbone under seeded projection heads: what clip and vlm-embed share.

    As open_clip's `HFTextEncoder` wraps any transformers model for CLIP training, this
    wraps one for retrieval, and a subclass says only what is its own: how its backbone
    and processor load (`_load_backbone`), the heads on its features (`_head_dims`), what
    LoRA adapts (`_lora_targets`), what stays frozen even when trained="full"
    (`_frozen_in_full`), its own settings (`_settings`), `inputs` and `forward`.

    One way for both, here: the settings every one has and `config`; where the backbone
    comes from (the model id, or the saved one when trained="full"); heads initialised
    from `seed`; LoRA adapters (new and seeded, or the saved ones); which parameters train
    (`trained`); `save` (heads as safetensors, the full backbone or the adapter through
    `save_pretrained`) and `load`. A subclass's `__init__` takes `_saved` (the folder
    `load` rebuilds from) and ends with `self._build(_saved)`.

    Args:
        model: a Hugging Face model id or local path.
        dim: size of the embeddings (the heads' output).
        seed: initialises the heads and any LoRA adapters (the same seed, the same encoder).
        trained: heads | full | lora.
        cache_dir: ignored: backbone features depend on trained weights, so none are cached
            (the Hugging Face cache holds the downloaded model).
        device: torch device of the backbone and heads.
        trust_remote_code: passed to the Auto classes; off unless asked for.
        lora_r: LoRA rank (trained="lora").
        lora_alpha: LoRA scaling numerator (trained="lora").
        lora_dropout: dropout on the LoRA branch (trained="lora").
        dtype: torch dtype of the backbone ("float32", "bfloat16", ...); heads stay float32.

    Raises:
        ValueError: an unknown `trained`.
    """

    name = ""
    processor: Any  # the backbone's processor (`_load_backbone` sets it)
    backbone: Any  # the transformers model (peft injects adapters in place)
    module: Any  # {"heads": the projection heads, "backbone": the backbone, maybe wrapped}

    def __init__(
        self,
        model: str,
        dim: int = 256,
        seed: int = 0,
        trained: str = "heads",
        cache_dir: Path | CacheRoot | None = None,
        device: str = "cpu",
        trust_remote_code: bool = False,
        *,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.0,
        dtype: str = "float32",
    ):
        check_trained(trained)
        self.model_id = str(model)
        self.dim = dim
        self.seed = seed
        self.trained = trained
        self.device = device
        self.trust_remote_code = trust_remote_code
        self.lora_r, self.lora_alpha, self.lora_dropout = lora_r, lora_alpha, lora_dropout
        self.dtype = dtype

    # -- what a subclass says ---------------------------------------------------------------

    def _load_backbone(self, source: str) -> Any:
        """The transformers model at `source` (setting `self.processor` and the like)."""
        raise NotImplementedError

    def _head_dims(self) -> dict[str, int]:
        """Each projection head's name and input size, in the order they are initialised."""
        raise NotImplementedError

    def _lora_targets(self) -> dict[str, Any]:
        """`LoraConfig` arguments naming what the adapters adapt (`target_modules`, ...)."""
        raise NotImplementedError

    def _frozen_in_full(self) -> set[str]:
        """Backbone parameters that stay frozen even when trained="full"."""
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        """This encoder's own settings, after the shared ones in `config`."""
        raise NotImplementedError

    # -- what they share --------------------------------------------------------------------

    def _build(self, saved: Path | None) -> None:
        """Backbone (the model id's, or the saved one), heads, adapters, what trains."""
        import torch

        source = self.model_id
        if saved is not None and self.trained == "full":
            source = str(saved / BACKBONE_DIR)
        self.backbone = self._load_backbone(source)
        generator = torch.Generator().manual_seed(self.seed)
        sizes = self._head_dims()
        heads = torch.nn.ModuleDict(
            {part: projection(size, self.dim, generator) for part, size in sizes.items()}
        )
        if saved is not None and len(heads):
            load_heads(heads, saved)
        wrapped = self._with_adapters(saved)
        frozen = self._frozen_in_full() if self.trained == "full" else set()
        for name, param in wrapped.named_parameters():
            if self.trained == "lora":
                param.requires_grad_(any(part in name for part in ADAPTER_PARAMETERS))
            else:
                param.requires_grad_(self.trained == "full" and name not in frozen)
        self.module = torch.nn.ModuleDict({"heads": heads, "backbone": wrapped}).to(self.device)
        self.module.eval()

    def _with_adapters(self, saved: Path | None) -> Any:
        """The backbone, with LoRA adapters when trained="lora": the saved ones, or new."""
        if self.trained != "lora":
            return self.backbone
        from peft import LoraConfig, PeftModel, get_peft_model

        if saved is not None:
            return PeftModel.from_pretrained(
                self.backbone, str(saved / ADAPTER_DIR), is_trainable=True
            )
        lora = LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            **self._lora_targets(),
        )
        with seeded(self.seed):
            return get_peft_model(self.backbone, lora)

    def _on_device(self, batch: Any) -> dict[str, Any]:
        """A processor's tensors on the device; floating ones in the backbone's dtype."""
        dtype = torch_dtype(self.dtype)
        return {
            k: v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in batch.items()
        }

    def embed(self, items: Sequence[EncodeItem]) -> np.ndarray:
        return embed_in_eval(self, items)

    def config(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "model": self.model_id,
            "dim": self.dim,
            "seed": self.seed,
            "trained": self.trained,
            "trust_remote_code": self.trust_remote_code,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            **self._settings(),
        }

    def save(self, directory: Path) -> None:
        """Heads as safetensors; the full backbone or the LoRA adapter in a subfolder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if len(self.module["heads"]):
            save_heads(self.module["heads"], directory)
        if self.trained == "full":
            self.backbone.save_pretrained(directory / BACKBONE_DIR, safe_serialization=True)
            self.processor.save_pretrained(directory / BACKBONE_DIR)
        elif self.trained == "lora":
            self.module["backbone"].save_pretrained(
                directory / ADAPTER_DIR, safe_serialization=True
            )
        save_config(directory, self.config())

    @classmethod
    def load(
        cls, directory: Path, *, cache_dir: Path | CacheRoot | None = None, device: str = "cpu"
    ) -> Self:
        """Rebuild a saved encoder: the model from its id or path, then the saved weights.

        The device is not part of the saved settings: it is where this process runs.
        """
        directory = Path(directory)
        settings = saved_settings(directory)
        return cls(**settings, cache_dir=cache_dir, device=device, _saved=directory)
