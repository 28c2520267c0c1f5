"""The demo corpus: M-BEIR layout, all task types, evidence only OCR can read, no leaks."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.ingest import validate_corpus
from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.corpus.readers import read_candidates, read_queries
from rar_pipeline.core.corpus.records import Modality
from rar_pipeline.core.demo.builder import (
    BRANDS,
    MARKER,
    DemoConfig,
    build_demo_corpus,
    compose_product,
    easy_vqa_labels,
)
from rar_pipeline.core.retrieval.pairs import (
    CONFIGS,
    build_pairs,
    pair_leaks,
    query_content,
    represent_candidates,
)

QA_RULE = re.compile(r"^\s*(what|where|why|when|which|how)\b", re.IGNORECASE)


def _queries(root: Path, task: int, split: str):
    path = root / "query" / split / f"mbeir_shapeshop_task{task}_{split}.jsonl"
    return read_queries(path, root, split=split).rows


def _truth(root: Path) -> list[dict]:
    path = root.parent / f"{root.name}_truth" / "products.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_demo_is_a_valid_mbeir_corpus(small_demo: Path):
    layout = discover(small_demo)
    assert set(layout.queries) == {f"mbeir_shapeshop_task{k}" for k in (0, 1, 2, 3, 6, 7)}
    assert "mbeir_union_train_cand_pool" in layout.pools
    assert "mbeir_union_test_cand_pool" in layout.pools
    assert all(set(s) == {"train", "test"} for s in layout.queries.values())
    reports = validate_corpus(layout)
    assert sum(r.summary["quarantined"] for r in reports) == 0
    assert all(r.summary["rows"] > 0 for r in reports)


def test_demo_covers_every_candidate_and_query_type(small_demo: Path):
    reports = {r.key: r for r in validate_corpus(discover(small_demo))}
    pool = reports["mbeir_union_test_cand_pool"].summary["by_modality"]
    assert all(pool[m.value] > 0 for m in Modality)
    assert all(q.modality is Modality.TEXT for q in _queries(small_demo, 0, "test"))
    assert all(q.modality is Modality.IMAGE for q in _queries(small_demo, 3, "test"))
    qa = _queries(small_demo, 6, "test")
    mod = _queries(small_demo, 7, "test")
    assert qa and mod
    # the method's routing rule sends task 6 to QA and task 7 to modification
    assert all(q.txt.endswith("?") for q in qa)
    assert not any(q.txt.endswith("?") or QA_RULE.match(q.txt) for q in mod)


def test_phrasings_vary(small_demo: Path):
    for task in (0, 1, 2, 6, 7):
        texts = [q.txt for q in _queries(small_demo, task, "train")]
        assert len(set(texts)) >= 6, task


def test_queries_are_specific_enough_to_have_few_positives(small_demo: Path):
    for task in (0, 2, 7):
        counts = [len(q.pos_cand_list) for q in _queries(small_demo, task, "test")]
        assert max(counts) <= 4 and sum(counts) / len(counts) < 2, task


def test_text_only_test_queries_never_appear_in_training(small_demo: Path):
    train = {q.txt for q in _queries(small_demo, 1, "train")}
    test = {q.txt for q in _queries(small_demo, 1, "test")}
    assert test and not (train & test)


def test_brand_is_evidence_only_the_pixels_carry(small_demo: Path):
    """Listings and image queries never name the brand in text: only the label shows it."""
    pool = small_demo / "cand_pool/local/mbeir_shapeshop_task2_cand_pool.jsonl"
    names = [b.name.lower() for b in BRANDS] + [b.title.lower() for b in BRANDS]
    for line in pool.read_text().splitlines():
        text = json.loads(line)["txt"].lower()
        assert not any(n in text for n in names)
    for q in _queries(small_demo, 6, "test") + _queries(small_demo, 3, "test"):
        assert not any(n in (q.txt or "").lower() for n in names)


def test_some_test_products_show_combinations_training_never_saw(small_demo: Path):
    truth = _truth(small_demo)
    train = {(p["shape"], p["colour"], p["brand"]) for p in truth if p["split"] == "train"}
    test = [(p["shape"], p["colour"], p["brand"]) for p in truth if p["split"] == "test"]
    unseen = [c for c in test if c not in train]
    assert 0 < len(unseen) < len(test)


def test_truth_lives_outside_the_data_root(small_demo: Path):
    assert not list(small_demo.rglob("products.jsonl"))
    truth = _truth(small_demo)
    splits = Counter(p["split"] for p in truth)
    assert splits == {"train": 60, "test": 40}
    assert len({p["img_path"] for p in truth}) == len(truth)
    assert all((small_demo / p["img_path"]).is_file() for p in truth)


def test_train_and_test_images_come_from_easy_vqa_train_and_test():
    train, test = easy_vqa_labels("train"), easy_vqa_labels("test")
    # labels are read off the Q/A pairs; a few images have too few questions to say both
    assert len(train) > 3400 and len(test) > 850
    assert set(Counter(s for s, _ in train.values())) == {"circle", "rectangle", "triangle"}


def test_product_image_has_canvas_size_and_label_pixels():
    import random

    from PIL import Image

    shape = Image.new("RGB", (64, 64), (250, 250, 250))
    image = compose_product(shape, "QUORBLE", random.Random(0))
    assert image.size == (160, 136)
    # the label is printed in the bottom band
    bottom = image.crop((0, 100, 160, 136)).convert("L")
    assert bottom.getextrema()[0] < 120


def test_builder_is_idempotent_and_guards_foreign_folders(tmp_path: Path):
    cfg = DemoConfig(
        n_train_products=12, n_test_products=8, train_queries_per_task=5, test_queries_per_task=4
    )
    root = tmp_path / "demo"
    first = build_demo_corpus(root, cfg)
    assert first["rebuilt"] and (root / MARKER).is_file()
    again = build_demo_corpus(root, cfg)
    assert not again["rebuilt"] and again["content_hash"] == first["content_hash"]
    assert build_demo_corpus(root, cfg, force=True)["content_hash"] == first["content_hash"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("do not touch")
    with pytest.raises(FileExistsError, match="refusing"):
        build_demo_corpus(foreign, cfg)
    assert (foreign / "precious.txt").read_text() == "do not touch"


def test_the_pipeline_trains_on_the_train_queries_that_repeat_a_test_querys_words(tmp_path):
    # the default corpus: train and test products share attributes and phrasings, so its
    # draws repeat test queries word for word (18, in tasks 0 and 2) with other products as
    # positives, as real corpora do; the pairs keep them, and nothing of the test split leaks
    root = tmp_path / "demo"
    build_demo_corpus(root, DemoConfig())
    layout = discover(root)
    check = ImageCheck(ImageCheckLevel.EXISTS)
    queries = [q for splits in layout.queries.values() for split, path in splits.items()
               for q in read_queries(path, root, split=split, image_check=check).rows]  # fmt: skip
    pools = {s: read_candidates(path, root, image_check=check).rows
             for s, path in layout.pools.items()}  # fmt: skip
    tests = {query_content(q) for q in queries if q.split == "test"}
    repeats = [q for q in queries if q.split == "train" and query_content(q) in tests]
    assert len(repeats) >= 10
    config = CONFIGS["none"]
    pairs = build_pairs(config, queries, {c.did: c for pool in pools.values() for c in pool})
    kept = set(zip(pairs.frame.query_key, pairs.frame.did, strict=True))
    assert {(q.key, d) for q in repeats for d in q.pos_cand_list} <= kept
    assert pairs.left_out.empty and pairs.counts["queries_repeating_a_test_query"] == len(repeats)
    table = represent_candidates(config, pools, queries)
    assert not any(pair_leaks(pairs.frame, table, queries).values())
