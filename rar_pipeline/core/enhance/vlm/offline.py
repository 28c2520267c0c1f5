"""The offline enhancer: the method's four prompt contracts without any downloadable VLM.

It sees only the item it enhances, its pixels and its text, never labels or qrels of that
item, and combines:

- what shipped pretrained models read off the pixels: printed text (rapidocr) and the main
  colours with the label masked out;
- what it learned from the corpus' *train split*: a caption memory of (image features,
  text) pairs taken from train queries and their positives (text query -> image positive,
  image query -> text positive). A new image borrows the words its nearest train images'
  texts agree on (a weighted vote, so words that vary between neighbours, such as brand
  names that image features cannot see, drop out).

Contracts honoured: dense captions within the word cap; QA rewrites that resolve "this" /
"here" / "it" with at most 5 words of visual detail and never answer; modification
distillation from the text alone (no image is read), dropping filler verbs, pronouns and
articles and keeping the content words.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rar_pipeline.core.enhance.perception import FEATURE_DIM, Perceived, Perceiver, Perception
from rar_pipeline.core.enhance.vlm.base import VLMRequest, VLMResult, image_error

OFFLINE_VERSION = "offline-2"
SELF_SIMILARITY = 0.9999  # cosine at or above which two images count as the same image
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'\-]*|\$?\d+(?:[.,]\d+)*")

# Function words: never caption content, never constraints.
FUNCTION_WORDS = set(
    """a an the this that these those it its it's they them their there here i i'd i'm me my
    mine we us our you your he she his her him one ones some any each every all both either
    neither of in on at to into onto from for with without by about as than then so but and
    or nor not no yes is are was were be been being am do does did has have had will would
    shall should can could may might must please just also very too only same-as what which
    who whom whose where when why how if else nothing everything something anything""".split()
)
# Verbs and fillers a modification request wraps its constraints in.
FILLER = set(
    """want wanted wants like likes prefer prefers preferred need needs make makes made
    change changes changed swap swaps switch switches turn turns keep keeps show shows give
    find get looking look see instead rather version-of let lets put set use""".split()
)
_DEICTIC = re.compile(r"\b(this|these)\b|\b(here)\b|\b(it)\b", re.IGNORECASE)


def tokens(text: str) -> list[str]:
    """Words and numbers of a text."""
    return _TOKEN.findall(text)


def content_words(text: str) -> list[str]:
    """Lower-cased words of a text that can carry content (no function words, no numbers)."""
    return [
        t.lower()
        for t in tokens(text)
        if t.lower() not in FUNCTION_WORDS and not t[0].isdigit() and not t.startswith("$")
    ]


def consensus_words(
    texts: Sequence[str], weights: Sequence[float], min_share: float = 0.5, limit: int = 8
) -> list[str]:
    """Words that texts of similar images agree on: weighted document frequency >= min_share.

    Ordered by agreement, then by first appearance in the most similar text.
    """
    total = float(sum(weights)) or 1.0
    share: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    position = 0
    for text, weight in zip(texts, weights, strict=True):
        for word in dict.fromkeys(content_words(text)):
            share[word] += weight / total
            if word not in first:
                first[word] = position
                position += 1
    agreed = [w for w, s in share.items() if s >= min_share]
    return sorted(agreed, key=lambda w: (-round(share[w], 6), first[w]))[:limit]


def distill_modification(text: str, limit: int = 30) -> str:
    """The constraints in a modification request, from its text alone."""
    kept = [t for t in tokens(text) if t.lower() not in FUNCTION_WORDS and t.lower() not in FILLER]
    return " ".join(kept[:limit]) if kept else text.strip()


def resolve_references(question: str, detail: list[str]) -> str:
    """Put at most five words of visual detail where the question points at the image.

    "who makes this?" -> "who makes this QUORBLE teal triangle?". Nothing else changes, so
    the question is never answered.
    """
    detail_text = " ".join(detail[:5]).strip()
    if not detail_text:
        return question.strip()
    match = _DEICTIC.search(question)
    if match is None:
        stripped = question.rstrip()
        if stripped.endswith("?"):
            return f"{stripped[:-1].rstrip()} ({detail_text})?"
        return f"{stripped} ({detail_text})"
    if match.group(1):  # "this" / "these": the detail becomes its noun phrase
        return f"{question[: match.end()]} {detail_text}{question[match.end() :]}"
    return f"{question[: match.end()]} ({detail_text}){question[match.end() :]}"


# ---------------------------------------------------------------------------
# the caption memory learned from the train split


class CaptionMemory:
    """(image features, text) pairs from the train split, searched by cosine similarity."""

    def __init__(self, features: np.ndarray, texts: list[str]) -> None:
        if len(features) != len(texts):
            raise ValueError(f"{len(features)} feature rows for {len(texts)} texts")
        self.features = np.asarray(features, dtype=np.float32)
        self.texts = list(texts)
        digest = hashlib.sha256(self.features.tobytes())
        digest.update(json.dumps(self.texts).encode())
        self.content_hash = digest.hexdigest()[:12]  # the memory never changes after this

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def fit(cls, pairs: Sequence[tuple[Path, str]], perceiver: Perceiver) -> CaptionMemory:
        """Featurize every pair's image (each distinct image once).

        A pair whose image is refused (too large, too thin) or unreadable is left out.
        """
        return cls._fit(pairs, perceiver)[0]

    @classmethod
    def _fit(
        cls, pairs: Sequence[tuple[Path, str]], perceiver: Perceiver
    ) -> tuple[CaptionMemory, list[tuple[Path, str]]]:
        """The memory, and the pairs it holds (those whose image could be read)."""
        if not pairs:
            return cls(np.zeros((0, FEATURE_DIM), dtype=np.float32), []), []
        feats = perceiver.features([p for p, _ in pairs])
        perceiver.flush()
        kept = [i for i in range(len(pairs)) if i not in feats.failed]
        return cls(feats.vectors[kept], [pairs[i][1] for i in kept]), [pairs[i] for i in kept]

    @classmethod
    def from_train_split(
        cls,
        queries: Sequence[Any],
        candidates: dict[str, Any],
        root: Path,
        perceiver: Perceiver,
    ) -> tuple[CaptionMemory, list[tuple[Path, str]]]:
        """Fit on the pairs the train split's labels assert (see `train_pairs`).

        Returns:
            The memory and the pairs it was fitted on (those whose image could be read).
        """
        return cls._fit(train_pairs(queries, candidates, root), perceiver)

    @staticmethod
    def exists(directory: Path) -> bool:
        """Whether a memory was saved in `directory`."""
        return (Path(directory) / "texts.json").is_file()

    def save(self, directory: Path) -> None:
        """Safetensors for the matrix, JSON for the texts: no pickle."""
        from safetensors.numpy import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({"features": self.features}, str(directory / "features.safetensors"))
        (directory / "texts.json").write_text(json.dumps(self.texts))

    @classmethod
    def load(cls, directory: Path) -> CaptionMemory:
        from safetensors.numpy import load_file

        features = load_file(str(directory / "features.safetensors"))["features"]
        return cls(features, json.loads((directory / "texts.json").read_text()))

    def describe(self, features: np.ndarray, k: int = 10) -> list[str]:
        """Consensus words of the k nearest train texts, proper names excluded.

        Names (brands, people, places) are identity, which neighbours' image features do
        not establish: they must come from the item's own evidence (printed text), or a
        caption would assert a neighbour's brand.
        """
        from rar_pipeline.core.enhance.guard import entities

        if not len(self):
            return []
        sims = self.features @ features  # (n,)
        # Leave the image itself out: a train image must be captioned like a test image
        # (no borrowing of its own labels), and a test image that duplicates a train image
        # must not inherit that image's labels.
        sims = np.where(sims >= SELF_SIMILARITY, -np.inf, sims)
        top = np.argsort(-sims, kind="stable")[:k]
        top = top[np.isfinite(sims[top])]
        weights = np.clip(sims[top], 1e-3, None)
        texts = [self.texts[i] for i in top]
        names = set().union(*(entities(t)["name"] for t in texts))
        return [w for w in consensus_words(texts, weights.tolist()) if w not in names]


# ---------------------------------------------------------------------------
# the backend


class OfflineVLM:
    """The `VLM` protocol on shipped models plus a memory learned from the train split."""

    backend = "offline"

    def __init__(
        self, memory: CaptionMemory | None = None, perceiver: Perceiver | None = None, k: int = 10
    ) -> None:
        self.memory = memory or CaptionMemory(np.zeros((0, FEATURE_DIM), dtype=np.float32), [])
        self.perceiver = perceiver or Perceiver()
        self.k = k

    def preload(self) -> None:
        """Load the shipped models now, not on the first image."""
        self.perceiver.preload()

    @property
    def model_id(self) -> str:
        ocr = "ocr" if self.perceiver.ocr else "no-ocr"
        return f"{OFFLINE_VERSION}:{ocr}:k{self.k}:memory-{self.memory.content_hash}"

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMResult]:
        """One result per request; an unreadable image fails only its own request."""
        results: list[VLMResult | None] = [None] * len(requests)
        seen = self._perceive(requests, results)
        for i, request in enumerate(requests):
            if results[i] is not None:
                continue
            results[i] = self._one(request, seen.get(i))
        return [r for r in results if r is not None]

    def _perceive(
        self, requests: Sequence[VLMRequest], results: list[VLMResult | None]
    ) -> dict[int, Perception]:
        """What perception reads off each request's image.

        An image that is refused, unreadable or that a model raises on fails its own
        request alone: its error result is set in `results`.
        """
        with_image = [i for i, r in enumerate(requests) if r.image_path is not None]
        if not with_image:
            return {}
        parts: list[tuple[list[int], Perceived]] = []
        try:  # the whole batch at once: one cache lookup, batched features
            parts.append(
                (with_image, self.perceiver.perceive([requests[i].image_path for i in with_image]))
            )
        except Exception:  # a model raised on some image: find it, failing only its request
            for i in with_image:
                try:
                    parts.append(([i], self.perceiver.perceive([requests[i].image_path])))
                except Exception as exc:
                    results[i] = image_error(requests[i], exc)
        self.perceiver.flush()
        seen: dict[int, Perception] = {}
        for indices, perceived in parts:
            for j, i in enumerate(indices):
                if j in perceived.failed:
                    results[i] = image_error(requests[i], perceived.failed[j])
                elif (item := perceived.items[j]) is not None:
                    seen[i] = item
        return seen

    def _one(self, request: VLMRequest, seen: Perception | None) -> VLMResult:
        if request.prompt == "modification":
            return VLMResult(distill_modification(request.item_text or "", request.max_words))
        if seen is None:
            return VLMResult(None, f"{request.prompt} needs an image and the request has none")
        words = self.memory.describe(seen.features, self.k)
        if request.prompt == "qa_rewrite":
            return VLMResult(resolve_references(request.item_text or "", self._detail(seen, words)))
        if request.prompt in ("corpus_caption", "query_caption"):
            return VLMResult(self._caption(seen, words, request.max_words))
        return VLMResult(None, f"the offline backend has no rule for prompt {request.prompt!r}")

    @staticmethod
    def _object(seen: Perception, words: list[str]) -> list[str]:
        """The object phrase: the colour the pixels show, then what neighbours agree it is.

        A colour word the neighbours agree on yields to the measured colour.
        """
        vocabulary = _colour_vocabulary()
        kind = [w for w in words if w not in vocabulary]
        colour = (
            seen.colours[0] if seen.colours else next((w for w in words if w in vocabulary), None)
        )
        return ([colour] if colour else []) + kind

    @classmethod
    def _detail(cls, seen: Perception, words: list[str]) -> list[str]:
        """At most five words: printed text first, then colour and the object's kind."""
        detail = [w for line in seen.text[:2] for w in line.split()][:3]
        return (detail + cls._object(seen, words)[:2])[:5]

    @classmethod
    def _caption(cls, seen: Perception, words: list[str], max_words: int) -> str:
        parts = []
        phrase = cls._object(seen, words)
        if phrase:
            parts.append(" ".join(phrase).capitalize() + ".")
        if seen.text:
            parts.append("Visible text: " + "; ".join(f'"{t}"' for t in seen.text[:4]) + ".")
        if seen.colours:
            parts.append("Colours: " + ", ".join(seen.colours) + ".")
        caption = " ".join(parts) or "An image."
        return " ".join(caption.split()[:max_words])


def _colour_vocabulary() -> set[str]:
    from rar_pipeline.core.enhance.perception import COLOUR_NAMES

    return {w for name in COLOUR_NAMES for w in name.split()}


def train_pairs(
    queries: Sequence[Any], candidates: dict[str, Any], root: Path, limit: int = 20000
) -> list[tuple[Path, str]]:
    """(image, text) pairs that the train split's relevance labels assert.

    A text query and its image positives, an image query and its text positives. Only
    queries of the train split are used; test items never reach the memory.

    Args:
        queries: `Query` records (any split; non-train ones are skipped).
        candidates: did -> `Candidate`, the pools the positives live in.
        root: the data root.
        limit: at most this many pairs (the first ones, in query order).
    """
    from rar_pipeline.core.corpus.mbeir import resolve_in_root
    from rar_pipeline.core.corpus.records import Modality

    pairs: list[tuple[Path, str]] = []
    for query in queries:
        if query.split != "train":
            continue
        for did in query.pos_cand_list:
            cand = candidates.get(did)
            if cand is None:
                continue
            if query.modality is Modality.TEXT and cand.modality.has_image:
                pairs.append((resolve_in_root(root, cand.img_path), query.txt))
            elif query.modality is Modality.IMAGE and cand.modality is Modality.TEXT:
                pairs.append((resolve_in_root(root, query.img_path), cand.txt))
            if len(pairs) >= limit:
                return pairs
    return pairs
