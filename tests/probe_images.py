"""The thin images of issue 19's memory probe, and a small corpus whose pool holds them.

RapidOCR stretches an image's short side to 736 px before detection. Before images were
bounded in aspect, the 94-byte 1 x 2000 PNG made it ask for 7.6 GiB, the 10 x 500 one held a
search thread 30-110 s at 4.4 GB, and the 78 KB 1 x 39,999,999 one (within the 40M-pixel
bound) drove a server to 21.8 GB. Here they are real PNGs in mode "1": the tall one is
~78 KB and takes ~2 s to write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PROBES = {"1x2000": (1, 2000), "10x500": (10, 500), "1x39999999": (1, 39_999_999)}
# what validation says of each (`check_image`'s detail)
DETAILS = {
    "1x2000": "1x2000: aspect ratio 2000:1 > 20:1",
    "10x500": "10x500: aspect ratio 50:1 > 20:1",
    "1x39999999": "1x39999999: aspect ratio 39999999:1 > 20:1",
}
TASK = "mbeir_thin_task0"
SHARD = f"{TASK}_cand_pool"
# (did, drawing, caption-worthy words) of the ordinary pool images
SHAPES = [
    ("1:1", "red", "ellipse", None),
    ("1:2", "blue", "rectangle", None),
    ("1:3", "green", "ellipse", "MAPLIX"),
    ("1:4", "orange", "rectangle", None),
    ("1:5", "purple", "ellipse", "KESTRO"),
    ("1:6", "navy", "rectangle", None),
    ("1:7", "teal", "ellipse", None),
    ("1:8", "maroon", "rectangle", "VORNE"),
]
BANNER = "1:9"  # 1200 x 150: thinner than the 4:1 canvas, within 20:1, so padded and read
THIN_DIDS = {"1:20": "1x2000", "1:21": "10x500", "1:22": "1x39999999"}


def write_probes(folder: Path) -> dict[str, Path]:
    """The three probe PNGs in `folder` (written once; a later call reuses them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, size in PROBES.items():
        path = paths[name] = folder / f"{name}.png"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            Image.new("1", size).save(tmp, format="PNG")
            os.replace(tmp, path)
    return paths


def ordinary_image(path: Path, colour: str, shape: str, word: str | None = None) -> Path:
    """A 160 x 136 PNG like the demo's: a shape on white, maybe a printed word."""
    image = Image.new("RGB", (160, 136), "white")
    draw = ImageDraw.Draw(image)
    getattr(draw, shape)((40, 20, 120, 100), fill=colour)
    if word:
        draw.text((30, 104), word, fill="black", font=ImageFont.load_default(size=22))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _banner(path: Path) -> Path:
    image = Image.new("RGB", (1200, 150), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 30, 200, 120), fill="red")
    draw.text((260, 45), "ORBIQ", fill="black", font=ImageFont.load_default(size=56))
    image.save(path)
    return path


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _query(qid: str, text: str, positives: list[str]) -> dict:
    return {"qid": qid, "query_txt": text, "query_img_path": None, "query_modality": "text",
            "query_src_content": None, "pos_cand_list": positives, "neg_cand_list": []}  # fmt: skip


def build_thin_corpus(root: Path, *, thin: bool = True, probes: Path | None = None) -> Path:
    """A small M-BEIR corpus (one text-to-image task) at `root`; returns `root`.

    Its pool holds eight 160 x 136 shapes (three labelled), a 1200 x 150 banner and a text
    item; with `thin`, also the three probe images, one of them a train positive (so the
    caption memory meets it too when images are not checked at ingest).

    Args:
        root: the data root to write (its name is the corpus name).
        thin: add the probe images to the pool.
        probes: a folder holding the probes already (`write_probes`), to copy from.
    """
    images = root / "mbeir_images" / "thin"

    def row(did: str, path: Path) -> dict:
        rel = path.relative_to(root).as_posix()
        return {"did": did, "txt": None, "img_path": rel, "modality": "image"}

    pool = [row(did, ordinary_image(images / f"{did[2:]}.png", *look)) for did, *look in SHAPES]
    pool.append(row(BANNER, _banner(images / "banner.png")))
    pool.append({"did": "1:10", "txt": "A red circle on white.", "img_path": None,
                 "modality": "text"})  # fmt: skip
    train = [_query("1:100", "a red circle", ["1:1"]), _query("1:101", "a blue square", ["1:2"]),
             _query("1:102", "a green circle labelled MAPLIX", ["1:3"])]  # fmt: skip
    if thin:
        written = write_probes(probes or images)
        for did, name in THIN_DIDS.items():
            target = images / f"{name}.png"
            if written[name] != target:
                target.write_bytes(written[name].read_bytes())
            pool.append(row(did, target))
        train.append(_query("1:103", "an orange square", ["1:20", "1:4"]))
    _jsonl(root / "cand_pool" / "local" / f"{SHARD}.jsonl", pool)
    _jsonl(root / "query" / "train" / f"{TASK}_train.jsonl", train)
    test = [_query("1:200", "an orange square", ["1:4"]),
            _query("1:201", "a purple circle from KESTRO", ["1:5"]),
            _query("1:202", "the ORBIQ banner", [BANNER])]  # fmt: skip
    _jsonl(root / "query" / "test" / f"{TASK}_test.jsonl", test)
    qrels = root / "qrels" / "test" / f"{TASK}_test_qrels.txt"
    qrels.parent.mkdir(parents=True, exist_ok=True)
    qrels.write_text("".join(f"{q['qid']} 0 {q['pos_cand_list'][0]} 1 0\n" for q in test))
    return root
