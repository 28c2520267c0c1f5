"""Caption accuracy on the demo: scored against ground truth, after the fact."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.demo.evaluate import caption_accuracy, image_captions


def _truth(tmp_path: Path) -> Path:
    path = tmp_path / "truth.jsonl"
    keys = ("img_path", "split", "shape", "colour", "brand")
    products = [
        dict(zip(keys, ("p/1.png", "test", "circle", "red", "QUORBLE"), strict=True)),
        dict(zip(keys, ("p/2.png", "test", "triangle", "teal", "MAPLIX"), strict=True)),
        dict(zip(keys, ("p/3.png", "train", "circle", "blue", "HUXLEN"), strict=True)),
    ]
    path.write_text("".join(json.dumps(p) + "\n" for p in products))
    return path


def test_a_caption_names_an_attribute_only_by_its_first_mention(tmp_path: Path):
    captions = {
        "p/1.png": 'Red circle. Visible text: "QUORBLE".',
        "p/2.png": "Red, teal and blue triangle.",  # every colour named: the first one counts
        "p/3.png": "Blue circle HUXLEN",  # train split: not scored
    }
    scores = caption_accuracy(captions, _truth(tmp_path))
    assert scores == {"n": 2, "shape": 1.0, "colour": 0.5, "label": 0.5, "all": 0.5}


def test_only_captioned_images_of_the_split_are_scored(tmp_path: Path):
    assert caption_accuracy({}, _truth(tmp_path))["n"] == 0
    assert caption_accuracy({"p/3.png": "blue circle"}, _truth(tmp_path), split="train")["n"] == 1


def test_captions_are_keyed_by_image_and_failed_ones_are_left_out():
    cands = [
        Candidate("d1", Modality.IMAGE, None, "p/1.png"),
        Candidate("d2", Modality.IMAGE_TEXT, "listing", "p/2.png"),
        Candidate("d3", Modality.TEXT, "a passage", None),
    ]
    captions = pd.DataFrame(
        {"did": ["d1", "d2", "d3"], "caption": ["red circle", float("nan"), None]}
    )
    assert image_captions(cands, captions) == {"p/1.png": "red circle"}
