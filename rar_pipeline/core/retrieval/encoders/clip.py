"""The CLIP encoder: a Hugging Face CLIP or SigLIP dual encoder with trainable projection heads.

Any CLIP or SigLIP model id or local path loads through `AutoModel` / `AutoProcessor`.
Text goes through `get_text_features`, images through `get_image_features`; each feature is
L2-normalised and projected by its own linear head (no bias, seeded init as the offline
encoder's) into one `dim`-d space. An image+text item is the sum of its two projections,
then L2-normalised: UniIR's CLIP-SF score fusion.

`trained` picks what the contrastive trainer updates: the heads only (`heads`), the heads
and the whole backbone (`full`), or the heads and LoRA adapters on every linear layer of
both towers (`lora`, peft). Weights are saved as safetensors only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rar_pipeline.core.retrieval.encoders.base import (
    ENCODER_CONFIG,
    EncodeItem,
    check_trained,
    embed_in_eval,
)
from rar_pipeline.core.retrieval.encoders.heads import load_heads, projection, save_heads
from rar_pipeline.core.retrieval.encoders.hf import (
    ADAPTER_DIR,
    BACKBONE_DIR,
    linear_names,
    model_output_tensor,
    seeded,
    torch_dtype,
)


class ClipEncoder:
    """A CLIP / SigLIP dual encoder, projection heads into one space, sum fusion.

    Args:
        model: a Hugging Face CLIP or SigLIP model id or local path.
        dim: size of the shared embedding space.
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
        max_text_tokens: text truncation; None takes the text tower's position limit.

    Raises:
        ValueError: an unknown `trained` or dtype.
    """

    name = "clip"

    def __init__(
        self,
        model: str,
        dim: int = 256,
        seed: int = 0,
        trained: str = "heads",
        cache_dir: Path | None = None,
        device: str = "cpu",
        trust_remote_code: bool = False,
        *,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.0,
        dtype: str = "float32",
        max_text_tokens: int | None = None,
        _saved: Path | None = None,
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
        self._build(_saved, max_text_tokens)

    def _build(self, saved: Path | None, max_text_tokens: int | None) -> None:
        """Backbone (from the model id, or the saved one), adapters, heads, frozen parts."""
        import torch
        from transformers import AutoModel, AutoProcessor

        source = self.model_id
        if saved is not None and self.trained == "full":
            source = str(saved / BACKBONE_DIR)
        options = {"trust_remote_code": self.trust_remote_code}
        self.processor = AutoProcessor.from_pretrained(source, **options)
        backbone = AutoModel.from_pretrained(source, dtype=torch_dtype(self.dtype), **options)
        config = backbone.config
        self._siglip = config.model_type.startswith("siglip")
        self.max_text_tokens = max_text_tokens or config.text_config.max_position_embeddings
        shared_dim = getattr(config, "projection_dim", None)
        text_dim = shared_dim or config.text_config.hidden_size
        image_dim = shared_dim or config.vision_config.hidden_size
        self.backbone = backbone  # the transformers model (peft injects adapters in place)

        generator = torch.Generator().manual_seed(self.seed)
        heads = torch.nn.ModuleDict(
            {
                "text": projection(text_dim, self.dim, generator),
                "image": projection(image_dim, self.dim, generator),
            }
        )
        if saved is not None:
            load_heads(heads, saved)

        wrapped: Any = backbone
        if self.trained == "lora":
            from peft import LoraConfig, PeftModel, get_peft_model

            if saved is not None:
                wrapped = PeftModel.from_pretrained(
                    backbone, str(saved / ADAPTER_DIR), is_trainable=True
                )
            else:
                lora = LoraConfig(
                    r=self.lora_r,
                    lora_alpha=self.lora_alpha,
                    lora_dropout=self.lora_dropout,
                    target_modules=linear_names(backbone),
                )
                with seeded(self.seed):
                    wrapped = get_peft_model(backbone, lora)
        for name, param in wrapped.named_parameters():
            # the contrastive logit scale and bias go unused: the trainer has its temperature
            unused = name.rsplit(".", 1)[-1] in ("logit_scale", "logit_bias")
            param.requires_grad_((self.trained == "full" and not unused) or "lora_" in name)
        self.module = torch.nn.ModuleDict({"heads": heads, "backbone": wrapped}).to(self.device)
        self.module.eval()

    def inputs(self, items: Sequence[EncodeItem]) -> dict[str, Any]:
        """Tokenised texts and processed pixels of items, with the rows each belongs to.

        Returns:
            {"n": len(items), "text_rows": (t,) long, "text": tokenizer outputs or None,
            "image_rows": (i,) long, "image": image processor outputs or None}.
        """
        import torch

        from rar_pipeline.core.corpus.images import load_image

        text_rows = [i for i, item in enumerate(items) if item.txt]
        image_rows = [i for i, item in enumerate(items) if item.image_path is not None]
        batch: dict[str, Any] = {
            "n": len(items),
            "text_rows": torch.tensor(text_rows, dtype=torch.long, device=self.device),
            "image_rows": torch.tensor(image_rows, dtype=torch.long, device=self.device),
            "text": None,
            "image": None,
        }
        if text_rows:
            text = self.processor.tokenizer(
                [items[i].txt or "" for i in text_rows],
                padding="max_length" if self._siglip else True,
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="pt",
            )
            batch["text"] = {k: v.to(self.device) for k, v in text.items()}
        if image_rows:
            paths = [items[i].image_path for i in image_rows]
            pictures = [load_image(Path(path)) for path in paths if path is not None]
            pixels = self.processor.image_processor(images=pictures, return_tensors="pt")
            batch["image"] = {
                k: v.to(self.device, dtype=torch_dtype(self.dtype))
                if v.is_floating_point()
                else v.to(self.device)
                for k, v in pixels.items()
            }
        return batch

    def forward(self, inputs: dict[str, Any]) -> Any:
        """(n, dim) unit-length embeddings; gradients reach what `trained` names."""
        import torch
        from torch.nn.functional import normalize

        heads = self.module["heads"]
        fused = torch.zeros(inputs["n"], self.dim, device=self.device)
        if inputs["text"] is not None:
            text = model_output_tensor(self.backbone.get_text_features(**inputs["text"]))
            projected = heads["text"](normalize(text.float(), dim=1))
            fused = fused.index_add(0, inputs["text_rows"], projected)
        if inputs["image"] is not None:
            image = model_output_tensor(self.backbone.get_image_features(**inputs["image"]))
            projected = heads["image"](normalize(image.float(), dim=1))
            fused = fused.index_add(0, inputs["image_rows"], projected)
        return normalize(fused, dim=1)

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
            "dtype": self.dtype,
            "max_text_tokens": self.max_text_tokens,
        }

    def save(self, directory: Path) -> None:
        """Heads as safetensors; the full backbone or the LoRA adapter in a subfolder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_heads(self.module["heads"], directory)
        if self.trained == "full":
            self.backbone.save_pretrained(directory / BACKBONE_DIR, safe_serialization=True)
            self.processor.save_pretrained(directory / BACKBONE_DIR)
        elif self.trained == "lora":
            self.module["backbone"].save_pretrained(
                directory / ADAPTER_DIR, safe_serialization=True
            )
        (directory / ENCODER_CONFIG).write_text(json.dumps(self.config(), indent=2))

    @classmethod
    def load(
        cls, directory: Path, *, cache_dir: Path | None = None, device: str = "cpu"
    ) -> ClipEncoder:
        """Rebuild a saved encoder: the model from its id or path, then the saved weights.

        The device is not part of the saved settings: it is where this process runs.
        """
        directory = Path(directory)
        config = json.loads((directory / ENCODER_CONFIG).read_text())
        config.pop("encoder")
        return cls(**config, cache_dir=cache_dir, device=device, _saved=directory)
