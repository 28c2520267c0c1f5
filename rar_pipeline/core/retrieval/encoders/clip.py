"""The CLIP encoder: a Hugging Face CLIP or SigLIP dual encoder with trainable projection heads.

Any CLIP or SigLIP model id or local path loads through `AutoModel` / `AutoProcessor`.
Text goes through `get_text_features`, images through `get_image_features`; each feature is
L2-normalised and projected by its own linear head (no bias, seeded init as the offline
encoder's) into one `dim`-d space. An image+text item is the sum of its two projections,
then L2-normalised: UniIR's CLIP-SF score fusion.

`trained` picks what the contrastive trainer updates: the heads only (`heads`), the heads
and the whole backbone (`full`), or the heads and LoRA adapters on every linear layer of
both towers (`lora`, peft). Weights are saved as safetensors only. What every Hugging Face
encoder does the same way (settings, seeded heads, LoRA, freezing, save, load) is
`hf.HfEncoder`'s; this module says what is CLIP's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.retrieval.encoders.hf import (
    HfEncoder,
    linear_names,
    model_output_tensor,
    torch_dtype,
)


class ClipEncoder(HfEncoder):
    """A CLIP / SigLIP dual encoder, projection heads into one space, sum fusion.

    Args:
        model: a Hugging Face CLIP or SigLIP model id or local path.
        max_text_tokens: text truncation; None takes the text tower's position limit.
        **options: as `HfEncoder`: dim, seed, trained, cache_dir, device,
            trust_remote_code, lora_r (16), lora_alpha (32), lora_dropout, dtype.

    Raises:
        ValueError: an unknown `trained` or dtype.
    """

    name = "clip"

    def __init__(
        self,
        model: str,
        *,
        max_text_tokens: int | None = None,
        _saved: Path | None = None,
        **options: Any,
    ):
        super().__init__(model, **options)
        self.max_text_tokens = max_text_tokens
        self._build(_saved)

    def _load_backbone(self, source: str) -> Any:
        from transformers import AutoModel, AutoProcessor

        options = {"trust_remote_code": self.trust_remote_code}
        self.processor = AutoProcessor.from_pretrained(source, **options)
        backbone = AutoModel.from_pretrained(source, dtype=torch_dtype(self.dtype), **options)
        config = backbone.config
        self._siglip = config.model_type.startswith("siglip")
        self.max_text_tokens = self.max_text_tokens or config.text_config.max_position_embeddings
        return backbone

    def _head_dims(self) -> dict[str, int]:
        config = self.backbone.config
        shared_dim = getattr(config, "projection_dim", None)
        return {
            "text": shared_dim or config.text_config.hidden_size,
            "image": shared_dim or config.vision_config.hidden_size,
        }

    def _lora_targets(self) -> dict[str, Any]:
        return {"target_modules": linear_names(self.backbone)}

    def _frozen_in_full(self) -> set[str]:
        # the contrastive logit scale and bias go unused: the trainer has its temperature
        return {
            name
            for name, _ in self.backbone.named_parameters()
            if name.rsplit(".", 1)[-1] in ("logit_scale", "logit_bias")
        }

    def _settings(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "max_text_tokens": self.max_text_tokens}

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
            batch["text"] = self._on_device(text)  # token ids: integers, moved only
        if image_rows:
            paths = [items[i].image_path for i in image_rows]
            pictures = [load_image(Path(path)) for path in paths if path is not None]
            pixels = self.processor.image_processor(images=pictures, return_tensors="pt")
            batch["image"] = self._on_device(pixels)
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
