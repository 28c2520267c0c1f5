"""The vlm-embed encoder: a LamRA-style embedder on a Qwen2-VL-family vision-language model.

As LamRA (Liu et al., CVPR 2025) does, an `<emb>` token is added to the tokenizer (the
token embeddings resized), each item becomes one chat turn ending in a summarise-in-one-word
instruction, answered by `<emb>`:

    user: [image] [text] + "Summarize above image and sentence in one word: "
    assistant: <emb>.

and the item's embedding is a last-layer hidden state there, L2-normalised:

- `pool="lamra"` (default): the hidden state of the token just before `<emb>`, the one
  whose next-token prediction is `<emb>`; this is what LamRA's released code takes
  (`hidden_states[-1][i, emb_index - 1]`), so LamRA checkpoints embed as they were trained.
- `pool="emb"`: the hidden state at the `<emb>` token itself; its embedding row then shapes
  the embedding, so trained="lora" also trains that row.

A linear projection head (no bias, seeded) maps the hidden state to `dim` (`head=True`,
the default); it is what trained="heads" updates. `head=False` keeps the hidden state as
the embedding (`dim` must then equal the hidden size; not with trained="heads").

trained="lora" follows LamRA: LoRA r=128, alpha=256 on every linear layer of the language
model, the vision tower frozen. trained="full" trains the language model (and the head),
the vision tower (with its merger) still frozen. Settings, seeded heads, LoRA, freezing,
save and load are `hf.HfEncoder`'s, as for clip.

transformers 5's `Qwen2VLProcessor` requires a video processor, which needs torchvision;
`load_processor` loads Qwen2-VL-family processing files through an image-only subclass
(registered with `AutoProcessor`), so hub ids and local copies work without torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.retrieval.encoders.hf import HfEncoder, linear_names, torch_dtype

EMB_TOKEN = "<emb>"
POOLS = ("lamra", "emb")
# LamRA's instructions, by what the item holds.
SUMMARIZE = {
    (True, True): "\nSummarize above image and sentence in one word: ",
    (True, False): "\nSummarize above image in one word: ",
    (False, True): "\nSummarize above sentence in one word: ",
}


@cache
def image_only_processor_class(model_type: str) -> Any:
    """An image-only subclass of the Qwen2-VL-family processor of `model_type`.

    Registered with `AutoProcessor` for the model's config class, so a folder it saved
    loads back through `AutoProcessor` as well.
    """
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2VLConfig

    if model_type == "qwen2_vl":
        from transformers import Qwen2VLProcessor as base

        config_class: Any = Qwen2VLConfig
    elif model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as base

        config_class = Qwen2_5_VLConfig
    else:
        raise ValueError(f"no image-only processor for {model_type!r}")

    def __init__(  # noqa: N807
        self: Any,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: Any = None,
        **kwargs: Any,
    ) -> None:
        # `ProcessorMixin` takes its sub-processors from this signature: no video one.
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    name = f"{base.__name__.removesuffix('Processor')}ImageOnlyProcessor"
    cls = type(name, (base,), {"__init__": __init__, "__module__": __name__})
    AutoProcessor.register(config_class, cls, exist_ok=True)
    return cls


def load_processor(model: str, model_type: str, trust_remote_code: bool = False) -> Any:
    """The processor of `model`: image-only for the Qwen2-VL family, else `AutoProcessor`."""
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        return image_only_processor_class(model_type).from_pretrained(
            model, trust_remote_code=trust_remote_code
        )
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)


def add_emb_token(tokenizer: Any, model: Any, token: str = EMB_TOKEN) -> int:
    """Add `token` to the tokenizer and the model's token embeddings; its id.

    As LamRA, the embeddings are resized to the tokenizer's length. A row the resize adds
    starts as the mean of the existing rows (deterministic, so a reload rebuilds it).
    """
    import torch

    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    embeddings = model.get_input_embeddings()
    before = embeddings.weight.shape[0]
    if before != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embeddings = model.get_input_embeddings()
        if token_id >= before:
            with torch.no_grad():
                embeddings.weight[token_id] = embeddings.weight[:before].mean(dim=0)
    model.config.emb_token_ids = [token_id]
    return token_id


def vision_prefix(model: Any) -> str:
    """The module name of the model's vision tower (with its merger)."""
    inner = model.model
    tower = getattr(inner, "visual", None) or getattr(inner, "vision_tower", None)
    for name, module in model.named_modules():
        if module is tower:
            return name
    raise ValueError(f"no vision tower found in {type(model).__name__}")


def messages(item: EncodeItem) -> list[dict[str, Any]]:
    """LamRA's chat for one item: the item and an instruction, answered by `<emb>`."""
    has_image, has_text = item.image_path is not None, bool(item.txt)
    content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
    text = f"{item.txt or ''}{SUMMARIZE[(has_image, has_text)]}"
    content.append({"type": "text", "text": text})
    return [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": f"{EMB_TOKEN}."}]},
    ]


class VlmEmbedEncoder(HfEncoder):
    """A Qwen2-VL-family model as a LamRA-style embedder of any modality.

    Args:
        model: a Hugging Face Qwen2-VL / Qwen2.5-VL model id or local path (a LamRA
            checkpoint such as code-kunkun/LamRA-Ret included).
        lora_r: LoRA rank (LamRA: 128).
        lora_alpha: LoRA scaling numerator (LamRA: 256).
        pool: "lamra" (the state before `<emb>`) or "emb" (the state at `<emb>`).
        head: project the hidden state to `dim` with a trainable linear head.
        **options: as `HfEncoder`: dim (the head's output), seed, trained, cache_dir,
            device, trust_remote_code, lora_dropout, dtype (the head stays float32).

    Raises:
        ValueError: an unknown `trained`, pool or dtype; trained="heads" without a head; a
            `dim` other than the hidden size without a head.
    """

    name = "vlm-embed"

    def __init__(
        self,
        model: str,
        *,
        lora_r: int = 128,
        lora_alpha: int = 256,
        pool: str = "lamra",
        head: bool = True,
        _saved: Path | None = None,
        **options: Any,
    ):
        super().__init__(model, lora_r=lora_r, lora_alpha=lora_alpha, **options)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        if self.trained == "heads" and not head:
            raise ValueError('trained="heads" needs head=True: there is nothing else to train')
        self.pool = pool
        self.head = head
        self._build(_saved)

    def _load_backbone(self, source: str) -> Any:
        """The model with `<emb>` added; its vision tower found."""
        from transformers import AutoConfig, AutoModelForImageTextToText

        options = {"trust_remote_code": self.trust_remote_code}
        model_type = AutoConfig.from_pretrained(source, **options).model_type
        self.processor = load_processor(source, model_type, self.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=torch_dtype(self.dtype), **options
        )
        self.emb_id = add_emb_token(self.processor.tokenizer, model)
        self.vision = vision_prefix(model)
        return model

    def _head_dims(self) -> dict[str, int]:
        hidden = self.backbone.get_input_embeddings().weight.shape[1]
        if not self.head and self.dim != hidden:
            raise ValueError(f"without a head dim must be the hidden size {hidden}, not {self.dim}")
        return {"hidden": hidden} if self.head else {}

    def _lora_targets(self) -> dict[str, Any]:
        # LamRA: every linear layer of the language model; the vision tower stays frozen
        return {
            "target_modules": linear_names(self.backbone, skip=(self.vision, "lm_head")),
            "trainable_token_indices": (
                {"embed_tokens": [self.emb_id]} if self.pool == "emb" else None
            ),
        }

    def _frozen_in_full(self) -> set[str]:
        # the vision tower (with its merger), and an untied lm_head that pooling never reads
        model = self.backbone
        lm_head = model.get_output_embeddings()
        tied = lm_head is not None and lm_head.weight is model.get_input_embeddings().weight
        return {
            name
            for name, _ in model.named_parameters()
            if name.startswith(f"{self.vision}.") or (name.startswith("lm_head.") and not tied)
        }

    def _settings(self) -> dict[str, Any]:
        return {"pool": self.pool, "head": self.head, "dtype": self.dtype}

    def inputs(self, items: Sequence[EncodeItem]) -> dict[str, Any]:
        """The items' chats tokenised, their images as pixels, for `forward`."""
        from rar_pipeline.core.corpus.images import load_image

        texts = [
            self.processor.apply_chat_template(
                messages(item), tokenize=False, add_generation_prompt=True
            )
            for item in items
        ]
        pictures = [load_image(Path(i.image_path)) for i in items if i.image_path is not None]
        batch = self.processor(
            text=texts, images=pictures or None, padding=True, return_tensors="pt"
        )
        return self._on_device(batch)

    def forward(self, inputs: dict[str, Any]) -> Any:
        """(n, dim) unit-length embeddings; gradients reach what `trained` names."""
        import torch
        from torch.nn.functional import normalize

        hidden = self.backbone.model(**inputs).last_hidden_state  # (n, length, hidden)
        ids = inputs["input_ids"]
        at = torch.argmax((ids == self.emb_id).int(), dim=1)  # first <emb> of each row
        if self.pool == "lamra":
            at = at - 1
        pooled = hidden[torch.arange(ids.shape[0], device=ids.device), at].float()
        if self.head:
            pooled = self.module["heads"]["hidden"](normalize(pooled, dim=1))
        return normalize(pooled, dim=1)
