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
the vision tower (with its merger) still frozen.

transformers 5's `Qwen2VLProcessor` requires a video processor, which needs torchvision;
`load_processor` loads Qwen2-VL-family processing files through an image-only subclass
(registered with `AutoProcessor`), so hub ids and local copies work without torchvision.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
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
    seeded,
    torch_dtype,
)

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


class VlmEmbedEncoder:
    """A Qwen2-VL-family model as a LamRA-style embedder of any modality.

    Args:
        model: a Hugging Face Qwen2-VL / Qwen2.5-VL model id or local path (a LamRA
            checkpoint such as code-kunkun/LamRA-Ret included).
        dim: size of the embeddings (the head's output).
        seed: initialises the head and any LoRA adapters (the same seed, the same encoder).
        trained: heads | full | lora.
        cache_dir: ignored: hidden states depend on trained weights, so none are cached.
        device: torch device of the model and head.
        trust_remote_code: passed to the Auto classes; off unless asked for.
        lora_r: LoRA rank (LamRA: 128).
        lora_alpha: LoRA scaling numerator (LamRA: 256).
        lora_dropout: dropout on the LoRA branch.
        pool: "lamra" (the state before `<emb>`) or "emb" (the state at `<emb>`).
        head: project the hidden state to `dim` with a trainable linear head.
        dtype: torch dtype of the model ("float32", "bfloat16", ...); the head stays float32.

    Raises:
        ValueError: an unknown `trained`, pool or dtype; trained="heads" without a head; a
            `dim` other than the hidden size without a head.
    """

    name = "vlm-embed"

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
        lora_r: int = 128,
        lora_alpha: int = 256,
        lora_dropout: float = 0.0,
        pool: str = "lamra",
        head: bool = True,
        dtype: str = "float32",
        _saved: Path | None = None,
    ):
        check_trained(trained)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        if trained == "heads" and not head:
            raise ValueError('trained="heads" needs head=True: there is nothing else to train')
        self.model_id = str(model)
        self.dim = dim
        self.seed = seed
        self.trained = trained
        self.device = device
        self.trust_remote_code = trust_remote_code
        self.lora_r, self.lora_alpha, self.lora_dropout = lora_r, lora_alpha, lora_dropout
        self.pool = pool
        self.head = head
        self.dtype = dtype
        self._build(_saved)

    def _build(self, saved: Path | None) -> None:
        """Model (from the model id, or the saved one), `<emb>`, adapters, head, frozen parts."""
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        source = self.model_id
        if saved is not None and self.trained == "full":
            source = str(saved / BACKBONE_DIR)
        options = {"trust_remote_code": self.trust_remote_code}
        model_type = AutoConfig.from_pretrained(source, **options).model_type
        self.processor = load_processor(source, model_type, self.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=torch_dtype(self.dtype), **options
        )
        self.emb_id = add_emb_token(self.processor.tokenizer, model)
        self.backbone = model  # the transformers model (peft injects adapters in place)
        hidden = model.get_input_embeddings().weight.shape[1]
        if not self.head and self.dim != hidden:
            raise ValueError(f"without a head dim must be the hidden size {hidden}, not {self.dim}")

        generator = torch.Generator().manual_seed(self.seed)
        heads = torch.nn.ModuleDict(
            {"hidden": projection(hidden, self.dim, generator)} if self.head else {}
        )
        if saved is not None and self.head:
            load_heads(heads, saved)

        vision = self._vision_prefix(model)
        wrapped: Any = model
        if self.trained == "lora":
            from peft import LoraConfig, PeftModel, get_peft_model

            if saved is not None:
                wrapped = PeftModel.from_pretrained(
                    model, str(saved / ADAPTER_DIR), is_trainable=True
                )
            else:
                lora = LoraConfig(
                    r=self.lora_r,
                    lora_alpha=self.lora_alpha,
                    lora_dropout=self.lora_dropout,
                    target_modules=linear_names(model, skip=(vision, "lm_head")),
                    trainable_token_indices=(
                        {"embed_tokens": [self.emb_id]} if self.pool == "emb" else None
                    ),
                )
                with seeded(self.seed):
                    wrapped = get_peft_model(model, lora)
            for name, param in wrapped.named_parameters():
                param.requires_grad_("lora_" in name or "trainable_tokens_delta" in name)
        else:
            lm_head = model.get_output_embeddings()
            tied = lm_head is not None and lm_head.weight is model.get_input_embeddings().weight
            for name, param in model.named_parameters():
                frozen = name.startswith(f"{vision}.") or (name.startswith("lm_head.") and not tied)
                param.requires_grad_(self.trained == "full" and not frozen)
        self.module = torch.nn.ModuleDict({"heads": heads, "backbone": wrapped}).to(self.device)
        self.module.eval()

    @staticmethod
    def _vision_prefix(model: Any) -> str:
        """The module name of the vision tower (with its merger)."""
        inner = model.model
        tower = getattr(inner, "visual", None) or getattr(inner, "vision_tower", None)
        for name, module in model.named_modules():
            if module is tower:
                return name
        raise ValueError(f"no vision tower found in {type(model).__name__}")

    def inputs(self, items: Sequence[EncodeItem]) -> dict[str, Any]:
        """The items' chats tokenised, their images as pixels, for `forward`."""
        import torch

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
        dtype = torch_dtype(self.dtype)
        return {
            k: v.to(self.device, dtype=dtype) if torch.is_floating_point(v) else v.to(self.device)
            for k, v in batch.items()
        }

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
            "pool": self.pool,
            "head": self.head,
            "dtype": self.dtype,
        }

    def save(self, directory: Path) -> None:
        """Head as safetensors; the full model or the LoRA adapter in a subfolder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.head:
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
    ) -> VlmEmbedEncoder:
        """Rebuild a saved encoder: the model from its id or path, then the saved weights.

        The device is not part of the saved settings: it is where this process runs.
        """
        directory = Path(directory)
        config = json.loads((directory / ENCODER_CONFIG).read_text())
        config.pop("encoder")
        return cls(**config, cache_dir=cache_dir, device=device, _saved=directory)
