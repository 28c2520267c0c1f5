"""How well captions name what the demo's ground truth says each product photo shows.

Evaluation only: it runs after captioning, reads the ground truth the builder wrote outside
the data root (`core.layout.demo_truth_file`), and nothing it reads flows back into any
enhancement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from rar_pipeline.core.corpus.records import Candidate
from rar_pipeline.core.demo.world import COLOURS, SHAPES


def image_captions(candidates: Sequence[Candidate], captions: pd.DataFrame) -> dict[str, str]:
    """Image path -> caption, for a shard's candidates that have an image and a caption."""
    by_did = {
        did: caption
        for did, caption in zip(captions["did"], captions["caption"], strict=True)
        if isinstance(caption, str) and caption
    }
    return {c.img_path: by_did[c.did] for c in candidates if c.img_path and c.did in by_did}


def caption_accuracy(captions: dict[str, str], truth_file: Path, split: str = "test") -> dict:
    """Share of a split's product captions that name the right shape, colour and label.

    Evaluation only: it runs after captioning and nothing it reads flows back into any
    enhancement. A caption "names" an attribute when the first shape word / first colour
    word it contains is the right one (so naming every colour does not score), and the
    brand label text appears in it.

    Args:
        captions: image path (relative to the data root) -> caption.
        truth_file: the builder's products.jsonl.
        split: which split's products to score.

    Returns:
        n, and the shares for shape, colour, label and all three.
    """
    products = [json.loads(line) for line in truth_file.read_text().splitlines()]
    scored = [
        (p, captions[p["img_path"]])
        for p in products
        if p["split"] == split and p["img_path"] in captions
    ]
    hits = {"shape": 0, "colour": 0, "label": 0, "all": 0}
    for p, caption in scored:
        found = re.findall(r"[a-z]+", (caption or "").lower())
        shape = next((w for w in found if w in SHAPES), None) == p["shape"]
        colour = next((w for w in found if w in COLOURS), None) == p["colour"]
        label = p["brand"].lower() in (caption or "").lower()
        hits["shape"] += shape
        hits["colour"] += colour
        hits["label"] += label
        hits["all"] += shape and colour and label
    n = len(scored)
    return {"n": n, **{k: round(v / n, 4) if n else 0.0 for k, v in hits.items()}}
