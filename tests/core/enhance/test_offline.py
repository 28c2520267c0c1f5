"""The offline enhancer: the method's prompt contracts from shipped models and the train split.

Pure rules first (distillation, reference resolution, consensus, train pairs), then real
perception on drawn images and on the demo corpus.
"""

from __future__ import annotations

import builtins
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from rar_pipeline.core.corpus.readers import read_candidates, read_queries
from rar_pipeline.core.corpus.records import Candidate, Modality, Query
from rar_pipeline.core.demo.builder import BRANDS
from rar_pipeline.core.enhance.prompts import (
    CORPUS_CAPTION,
    MODIFICATION,
    QA_REWRITE,
    QUERY_CAPTION,
)
from rar_pipeline.core.enhance.vlm.base import VLMRequest
from rar_pipeline.core.enhance.vlm.offline import (
    CaptionMemory,
    OfflineVLM,
    Perceiver,
    consensus_words,
    distill_modification,
    resolve_references,
    train_pairs,
)

# ---------------------------------------------------------------------------
# modification: constraints from the text alone

FILLER_AND_FUNCTION = {
    "i",
    "i'd",
    "want",
    "it",
    "in",
    "instead",
    "the",
    "a",
    "and",
    "but",
    "made",
    "by",
    "to",
    "for",
    "into",
    "swap",
    "change",
    "turn",
    "keep",
    "prefer",
    "make",
    "this",
}


@pytest.mark.parametrize(
    ("request_text", "constraints"),
    [
        ("I want it in red instead", "red"),
        ("same shape and colour but made by Velmora", "same shape colour Velmora"),
        ("change the colour to blue", "colour blue"),
        ("swap the shape for a triangle", "shape triangle"),
        ("keep everything, turn it into a triangle", "triangle"),
        ("make this teal", "teal"),
        ("I'd prefer the Quorble version", "Quorble version"),
    ],
)
def test_distillation_drops_filler_and_keeps_adjectives_and_nouns(request_text, constraints):
    out = distill_modification(request_text)
    assert out == constraints
    assert not {w.lower() for w in out.split()} & FILLER_AND_FUNCTION


def test_distillation_respects_its_word_limit_and_never_returns_nothing():
    long_request = " ".join(f"red{i}" for i in range(50))
    assert len(distill_modification(long_request, limit=30).split()) == 30
    assert distill_modification("make it so").strip() != ""


def test_offline_modification_reads_no_image():
    request = VLMRequest(
        prompt=MODIFICATION.name,
        system=MODIFICATION.system,
        user=MODIFICATION.user("I want it in red instead"),
        image_path=None,
        item_text="I want it in red instead",
        max_words=MODIFICATION.max_words,
    )

    class Blind(Perceiver):
        def perceive(self, paths):  # pragma: no cover - failing is the point
            raise AssertionError("a modification request must not be perceived")

    [result] = OfflineVLM(perceiver=Blind()).generate([request])
    assert result.ok and result.text == "red"


# ---------------------------------------------------------------------------
# QA: resolve references, never answer


def _strip_detail(rewrite: str, detail: list[str]) -> list[str]:
    """The rewrite's words with the inserted detail (and its brackets) taken out."""
    words = rewrite.replace("(", " ").replace(")", " ").replace("?", " ?").split()
    remaining = Counter(detail)
    kept = []
    for word in words:
        if remaining[word] > 0:
            remaining[word] -= 1
            continue
        kept.append(word)
    return kept


def _words(question: str) -> list[str]:
    return question.replace("?", " ?").split()


def test_resolve_puts_the_detail_where_the_question_points():
    out = resolve_references("who makes this?", ["QUORBLE", "teal", "triangle"])
    assert "this QUORBLE teal triangle?" in out
    assert out.endswith("?")


@pytest.mark.parametrize(
    "question",
    [
        "who makes this?",
        "where was it painted?",
        "who started the brand shown here?",
        "how old is the brand on these?",
        "how old is the brand?",  # nothing to point at: the detail goes at the end
        "when did the company start out",  # not a question mark: none is added
    ],
)
def test_resolve_adds_at_most_five_words_and_never_answers(question: str):
    detail = ["QUORBLE", "teal", "triangle", "toy", "shape", "extra", "more"]
    out = resolve_references(question, detail)
    added = _strip_detail(out, detail)
    assert added == _words(question)  # every original word kept, in order, nothing else
    assert len(_words(out)) - len(_words(question)) <= 5
    assert out.rstrip().endswith("?") == question.rstrip().endswith("?")
    assert out.count("?") == question.count("?")


def test_resolve_without_detail_leaves_the_question_alone():
    assert resolve_references("  who makes this? ", []) == "who makes this?"


# ---------------------------------------------------------------------------
# consensus of the nearest train texts


def test_consensus_keeps_agreed_words_and_drops_the_ones_that_vary():
    texts = [
        "the red circle toy from Quorble",
        "a red circle toy by Velmora",
        "red circle made by Zintrak",
    ]
    words = consensus_words(texts, [1.0, 1.0, 1.0])
    assert words[:2] == ["red", "circle"]  # all three agree
    assert "toy" in words  # two of three
    assert not {"quorble", "velmora", "zintrak", "made"} & set(words)
    assert not {"the", "a", "from", "by"} & set(words)  # function words never count


def test_consensus_follows_the_weights_of_the_most_similar_texts():
    texts = ["blue triangle", "red circle", "red circle"]
    assert set(consensus_words(texts, [0.9, 0.05, 0.05])) == {"blue", "triangle"}
    assert set(consensus_words(texts, [0.2, 0.4, 0.4])) == {"red", "circle"}


def test_consensus_respects_its_limit():
    texts = ["one two three four five six seven eight nine ten"] * 2
    assert len(consensus_words(texts, [1, 1], limit=4)) == 4


# ---------------------------------------------------------------------------
# train pairs come from the train split only


def test_train_pairs_use_train_queries_only_and_cross_modalities(tmp_path: Path):
    candidates = {
        "photo": Candidate("photo", Modality.IMAGE, None, "img/photo.png"),
        "listing": Candidate("listing", Modality.IMAGE_TEXT, "Listing 1.", "img/listing.png"),
        "entry": Candidate("entry", Modality.TEXT, "Quorble circle in red.", None),
    }

    def query(qid, modality, txt, img, positives, split="train"):
        return Query(qid, modality, txt, img, tuple(positives), split=split)

    queries = [
        query("t0", Modality.TEXT, "red circle by Quorble", None, ["photo", "listing", "entry"]),
        query("i3", Modality.IMAGE, None, "img/q.png", ["entry", "photo"]),
        query("it6", Modality.IMAGE_TEXT, "who makes this?", "img/q2.png", ["entry"]),
        query("t0-test", Modality.TEXT, "TEST ONLY", None, ["photo"], split="test"),
        query("i3-test", Modality.IMAGE, None, "img/test.png", ["entry"], split="test"),
        query("t0-val", Modality.TEXT, "VAL ONLY", None, ["photo"], split="val"),
        query("t-missing", Modality.TEXT, "dangling", None, ["nowhere"]),
    ]
    pairs = train_pairs(queries, candidates, tmp_path)
    assert pairs == [
        (tmp_path / "img/photo.png", "red circle by Quorble"),
        (tmp_path / "img/listing.png", "red circle by Quorble"),
        (tmp_path / "img/q.png", "Quorble circle in red."),
    ]
    assert train_pairs(queries, candidates, tmp_path, limit=2) == pairs[:2]


# ---------------------------------------------------------------------------
# real perception on drawn images


def _product(path: Path, word: str, shape_rgb, ink_rgb, radius: int = 22) -> Path:
    """A coloured circle on a light background with a word printed under it."""
    image = Image.new("RGB", (160, 136), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    draw.ellipse((80 - radius, 40 - radius, 80 + radius, 40 + radius), fill=shape_rgb)
    font = ImageFont.load_default(size=26)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = (160 - (right - left)) // 2
    y = 136 - (bottom - top) - 10 - top
    draw.text((x, y), word, fill=ink_rgb, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_read_text_and_colours_see_the_label_and_the_object(tmp_path: Path):
    from rar_pipeline.core.enhance.perception import dominant_colours, read_text

    path = _product(tmp_path / "maplix.png", "MAPLIX", (220, 30, 30), (0, 0, 200))
    image = Image.open(path).convert("RGB")
    boxes = read_text(image)
    assert [b.text for b in boxes] == ["MAPLIX"]
    assert boxes[0].box[1] > 90  # the label sits under the circle
    colours = dominant_colours(image, boxes)
    assert colours[0] == "red"
    assert "blue" not in colours  # the ink of the label is not the object's colour


# ---------------------------------------------------------------------------
# the offline backend on the demo corpus


def _truth(root: Path) -> list[dict]:
    path = root.parent / f"{root.name}_truth" / "products.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _train_pairs_of(root: Path, limit: int) -> list[tuple[Path, str]]:
    queries = []
    for task in (0, 3):
        path = root / "query" / "train" / f"mbeir_shapeshop_task{task}_train.jsonl"
        queries += read_queries(path, root, split="train").rows
    pool = root / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl"
    candidates = {c.did: c for c in read_candidates(pool, root).rows}
    return train_pairs(queries, candidates, root, limit=limit)


def _forbid_reading(monkeypatch: pytest.MonkeyPatch, fragment: str) -> None:
    real_open = io.open

    def guarded(file, *args, **kwargs):
        if fragment in str(file):
            raise AssertionError(f"the enhancer read {file}")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


def _caption_request(spec, image: Path, text: str | None = None) -> VLMRequest:
    return spec.request(text, image)


@pytest.mark.slow  # 4-9 s on 2 cores: loads EfficientNet and OCR, featurizes 60 train images
def test_offline_vlm_captions_an_unseen_test_image_from_its_pixels(
    small_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    truth = _truth(small_demo)
    train_looks = Counter((p["shape"], p["colour"]) for p in truth if p["split"] == "train")
    test = [p for p in truth if p["split"] == "test"]
    # test products whose shape and colour the train split shows most often
    chosen = sorted(test, key=lambda p: (-train_looks[(p["shape"], p["colour"])], p["key"]))[:2]
    # copy them out of the corpus under neutral names: nothing but pixels to go on
    images = []
    for n, product in enumerate(chosen):
        images.append(tmp_path / f"query{n}.png")
        shutil.copyfile(small_demo / product["img_path"], images[-1])

    pairs = _train_pairs_of(small_demo, limit=60)
    assert pairs and all("/train/" in p.as_posix() for p, _ in pairs)
    memory = CaptionMemory.fit(pairs, Perceiver())
    vlm = OfflineVLM(memory)
    _forbid_reading(monkeypatch, "_truth")
    with pytest.raises(AssertionError, match="read"):  # the guard is in force
        (small_demo.parent / f"{small_demo.name}_truth" / "products.jsonl").read_text()

    requests = [_caption_request(CORPUS_CAPTION, image) for image in images]
    requests += [_caption_request(QUERY_CAPTION, images[0])]
    requests += [_caption_request(QA_REWRITE, images[0], "who makes this?")]
    results = vlm.generate(requests)
    assert all(r.ok for r in results), results

    for product, result in zip(chosen, results[:2], strict=True):
        caption = result.text.lower()
        assert product["shape"] in caption, (product, result.text)
        assert product["colour"] in caption, (product, result.text)
        assert product["brand"].lower() in caption, (product, result.text)
        others = {b.name.lower() for b in BRANDS} - {product["brand"].lower()}
        assert not any(o in caption for o in others), result.text  # no neighbour's brand
        assert len(result.text.split()) <= CORPUS_CAPTION.max_words
    assert len(results[2].text.split()) <= QUERY_CAPTION.max_words
    assert chosen[0]["brand"].lower() in results[2].text.lower()

    rewrite = results[3].text
    assert rewrite.startswith("who makes this") and rewrite.endswith("?")
    assert chosen[0]["brand"] in rewrite  # the label resolves "this"
    assert len(rewrite.split()) <= len("who makes this?".split()) + 5


def test_offline_vlm_fails_only_the_request_whose_image_is_unreadable(tmp_path: Path):
    good = _product(tmp_path / "good.png", "KESTRO", (20, 20, 200), (20, 20, 20))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    memory = CaptionMemory(np.zeros((0, 1280), dtype=np.float32), [])
    results = OfflineVLM(memory).generate(
        [_caption_request(QUERY_CAPTION, bad), _caption_request(QUERY_CAPTION, good)]
    )
    assert len(results) == 2
    assert not results[0].ok and results[0].error
    assert results[1].ok and "KESTRO" in results[1].text


def test_offline_model_id_changes_when_the_memory_changes():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((3, 1280)).astype(np.float32)
    texts = ["red circle", "blue triangle", "teal rectangle"]
    base = OfflineVLM(CaptionMemory(features, texts))
    assert base.model_id == OfflineVLM(CaptionMemory(features.copy(), list(texts))).model_id
    other_texts = OfflineVLM(CaptionMemory(features, [*texts[:2], "gray rectangle"]))
    other_features = OfflineVLM(CaptionMemory(features * 0.5, texts))
    fewer = OfflineVLM(CaptionMemory(features[:2], texts[:2]))
    ids = {base.model_id, other_texts.model_id, other_features.model_id, fewer.model_id}
    assert len(ids) == 4
    assert base.backend == "offline"


def test_memory_never_lends_a_neighbours_name_even_when_all_neighbours_agree():
    features = np.zeros((3, 1280), dtype=np.float32)
    features[:, 0] = 1.0
    texts = ["the red circle by Quorble", "a red circle from Quorble", "red circle, Quorble"]
    memory = CaptionMemory(features, texts)
    query = np.zeros(1280, dtype=np.float32)
    query[:2] = (1.0, 0.05)  # a similar image, not one of the memory's own
    words = memory.describe(query / np.linalg.norm(query), k=3)
    assert words[:2] == ["red", "circle"]
    assert "quorble" not in words  # identity comes from the item's own printed text only


def test_an_image_never_borrows_its_own_memory_entry():
    """Train images are captioned like test images, and a duplicate inherits no labels."""
    features = np.eye(3, 1280, dtype=np.float32)
    features[1] = features[0] * 0.999 + features[1] * 0.045  # a near neighbour of image 0
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    memory = CaptionMemory(features, ["teal triangle", "blue square", "green star"])
    words = memory.describe(features[0], k=1)
    assert words == ["blue", "square"]  # its nearest *other* image, not its own text


def test_caption_memory_round_trips_through_disk(tmp_path: Path):
    rng = np.random.default_rng(1)
    memory = CaptionMemory(rng.standard_normal((2, 1280)).astype(np.float32), ["a", "b"])
    memory.save(tmp_path / "memory")
    loaded = CaptionMemory.load(tmp_path / "memory")
    assert loaded.content_hash == memory.content_hash and loaded.texts == ["a", "b"]
