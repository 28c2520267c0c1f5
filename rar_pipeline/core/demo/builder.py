"""Build the demo corpus, "shapeshop", in M-BEIR layout from easy-vqa's images.

easy-vqa (MIT) has 5,000 real 64x64 images of one coloured shape each. As it comes it is too
easy to show the method: a retriever on pretrained image features learns its 24
colour-shape classes in ~100 steps. So each shape becomes a *product*: it is composed onto a
larger canvas above a printed brand label (a made-up brand name) that only OCR can read. The
brands have a small knowledge base (who founded them, where they are, when they opened) for
QA-style queries, some colour-shape-brand combinations appear only in the test split, and
queries name all three attributes so they have few positives.

Tasks (dataset id 50, file prefix ``mbeir_shapeshop_task<k>``):

======  =======================  ==================================================
task    query -> candidate       example
======  =======================  ==================================================
0       text -> image            "the teal triangle with the Quorble label"
1       text -> text             "Which toy maker is based in Tallinn?"
2       text -> (image, text)    "Quorble teal triangle listed at $9.99"
3       image -> text            [product photo] -> catalogue entry of that product
6       (image, text) -> text    [photo] "who founded the company that makes this?"
7       (image, text) -> image   [photo] "same one but in red"
======  =======================  ==================================================

Ground truth (shape, colour, brand of every product image) is written *outside* the data
root, to ``<out>_truth/products.jsonl``; the corpus itself holds only what a real corpus
would: items, queries, qrels. Nothing that enhances an item needs or reads the truth file.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from rar_pipeline.core.corpus.mbeir import (
    candidate_to_json,
    qrels_from_queries,
    query_to_json,
    write_jsonl,
    write_qrels,
)
from rar_pipeline.core.corpus.records import Candidate, Modality, Query

DATASET = "shapeshop"
DATASET_ID = 50
BUILDER_VERSION = 2
MARKER = ".rar_demo.json"
IMAGE_DIR = f"mbeir_images/{DATASET}_images"

SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "teal", "brown", "gray", "black")
PRICES = ("$4.99", "$7.50", "$9.99", "$12.00", "$15.25", "$19.90")
CANVAS = (160, 136)


@dataclass(frozen=True)
class Brand:
    """A made-up maker: its label text and the facts its knowledge passages state."""

    name: str
    founder: str
    city: str
    year: int
    material: str

    @property
    def title(self) -> str:
        return self.name.title()


BRANDS: tuple[Brand, ...] = (
    Brand("QUORBLE", "Mira Salo", "Tallinn", 1962, "birch plywood"),
    Brand("VELMORA", "Tomas Ekdahl", "Porto", 1978, "recycled tin"),
    Brand("ZINTRAK", "Ada Okafor", "Lagos", 1991, "coloured resin"),
    Brand("BROFELL", "Henrik Lund", "Bergen", 1955, "oak offcuts"),
    Brand("MAPLIX", "Carmen Ruiz", "Valencia", 1983, "pressed cork"),
    Brand("TORVANE", "Yuki Tanabe", "Sapporo", 2001, "bamboo fibre"),
    Brand("GLENDRY", "Fiona Marsh", "Galway", 1969, "felted wool"),
    Brand("HUXLEN", "Pavel Novak", "Brno", 1947, "enamelled steel"),
    Brand("SPARVIK", "Ingrid Holm", "Uppsala", 2010, "beech wood"),
    Brand("DORVANT", "Luca Bianchi", "Turin", 1938, "glazed ceramic"),
    Brand("FROMEL", "Anouk de Vries", "Utrecht", 1996, "hemp canvas"),
    Brand("KESTRO", "Omar Haddad", "Amman", 2007, "olive wood"),
)
FACETS = ("founder", "city", "year")


@dataclass(frozen=True)
class Product:
    """One product photo: ground truth, written only to the truth file and to qrels."""

    key: str  # e.g. "train_00042"
    split: str
    source_image: int  # easy-vqa image id
    shape: str
    colour: str
    brand: str
    price: str
    img_path: str


@dataclass(frozen=True)
class DemoConfig:
    """Size and seed of the demo corpus. Defaults fit the 15-minute demo budget on 2 cores."""

    n_train_products: int = 480
    n_test_products: int = 240
    train_queries_per_task: int = 300
    test_queries_per_task: int = 100
    holdout_fraction: float = 0.15
    seed: int = 7


# ---------------------------------------------------------------------------
# knowledge base and catalogue texts


def passage_text(brand: Brand, facet: str) -> str:
    """The knowledge passage stating one fact about one brand."""
    if facet == "founder":
        return (
            f"{brand.title} was started by {brand.founder}, who still signs off every new "
            f"design and sketches the shapes by hand."
        )
    if facet == "city":
        return (
            f"The {brand.title} workshop and head office are in {brand.city}, where every "
            f"piece is painted and packed."
        )
    if facet == "year":
        return (
            f"{brand.title} opened in {brand.year}; its first toys were cut from {brand.material}."
        )
    raise ValueError(f"unknown facet {facet!r}")


def catalogue_text(shape: str, colour: str, brand: Brand) -> str:
    """The catalogue entry of one colour-shape-brand product line."""
    return f"{brand.title} {shape} in {colour}. Painted toy shape from the {brand.title} range."


def listing_text(sku: int, price: str, rng: random.Random) -> str:
    """A shop listing's text: price and logistics only; the product is in its photo."""
    stock = rng.choice(
        ["in stock", "ships in 2 days", "last few left", "back in stock", "ships next week"]
    )
    return f"Listing {sku}. Price {price}, {stock}."


# ---------------------------------------------------------------------------
# query templates: varied phrasings; QA ones end with '?', modification ones do not start
# with a wh-word (the method's routing rule), exactly as a curated benchmark would be.

T2I = (
    "a {colour} {shape} made by {brand}",
    "the {colour} {shape} with the {brand} label",
    "{brand} {shape}, {colour}",
    "find {brand}'s {colour} {shape}",
    "photo of a {colour} {shape} toy from {brand}",
    "{colour} {shape} by {brand}",
)
# Text -> text: the last phrasing of each facet is kept for the test split, so no test query
# text appears in training.
T2T = {
    "founder": (
        "Which brand was started by {founder}?",
        "toy company founded by {founder}",
        "the maker whose founder is {founder}",
        "{founder} set up which label?",
    ),
    "city": (
        "Which toy maker is based in {city}?",
        "brand with its workshop in {city}",
        "shape maker headquartered in {city}",
        "the company that paints its toys in {city}",
    ),
    "year": (
        "Which brand opened in {year}?",
        "toy maker founded in {year}",
        "company that started making shapes in {year}",
        "a label that has existed since {year}",
    ),
}
T2IT = (
    "{brand} {colour} {shape} listed at {price}",
    "listing for a {colour} {shape} from {brand} at {price}",
    "{price} {brand} {shape} in {colour}",
    "buy the {colour} {brand} {shape} for {price}",
)
QA = {
    "founder": (
        "who founded the company that makes this?",
        "who started the brand shown here?",
        "whose firm produced this item?",
        "which person created the label on this product?",
    ),
    "city": (
        "where is the maker of this based?",
        "in what city does this brand have its workshop?",
        "which town is this product's company from?",
        "where was this toy painted and packed?",
    ),
    "year": (
        "when was the firm behind this founded?",
        "what year did the maker of this open?",
        "how old is the brand on this box?",
        "when did this company start out?",
    ),
}
MOD = {
    "colour": (
        "same one but in {colour}",
        "I want it in {colour} instead",
        "change the colour to {colour}",
        "make this {colour}",
        "in {colour} please, nothing else different",
    ),
    "shape": (
        "same maker and colour, but a {shape}",
        "swap the shape for a {shape}",
        "as a {shape} instead",
        "keep everything, turn it into a {shape}",
    ),
    "brand": (
        "the same item from {brand}",
        "I'd prefer the {brand} version",
        "same shape and colour but made by {brand}",
        "switch the maker to {brand}",
    ),
}


# ---------------------------------------------------------------------------
# images


def easy_vqa_labels(split: str) -> dict[int, tuple[str, str]]:
    """Shape and colour of every easy-vqa image, read off its question/answer pairs.

    An answer may name the shape or colour ("what color is the circle?" -> "red"); a yes/no
    answer affirms the shape and colour words of its question, unless the question is
    negated ("is there not a red shape?" -> "no" affirms red).
    """
    import easy_vqa

    questions = (
        easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    )
    shape: dict[int, str] = {}
    colour: dict[int, str] = {}
    for text, answer, image_id in zip(*questions, strict=True):
        words = re.findall(r"[a-z]+", text.lower())
        if answer in ("yes", "no"):
            negated = "not" in words or "no" in words
            if (answer == "yes") == negated:
                continue  # the question's words are denied, not affirmed
        else:
            words.append(answer)
        for word in words:
            if word in SHAPES:
                shape[image_id] = word
            elif word in COLOURS:
                colour[image_id] = word
    return {i: (shape[i], colour[i]) for i in sorted(shape.keys() & colour.keys())}


def easy_vqa_image_paths(split: str) -> dict[int, str]:
    """easy-vqa's own image files for a split."""
    import easy_vqa

    return easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()


def compose_product(shape_image: Image.Image, label: str, rng: random.Random) -> Image.Image:
    """Place a shape on a larger canvas above a printed brand label.

    The label is printed with Pillow's built-in font, which OCR reads reliably and which
    pretrained image features do not resolve into words.
    """
    shape_image = shape_image.convert("RGB")
    background = shape_image.getpixel((0, 0))
    canvas = Image.new("RGB", CANVAS, background)
    size = rng.randint(72, 88)
    shape = shape_image.resize((size, size), Image.Resampling.BICUBIC)
    x = rng.randint(6, CANVAS[0] - size - 6)
    canvas.paste(shape, (x, rng.randint(2, 8)))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=rng.choice((22, 24, 26)))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    width, height = right - left, bottom - top
    tx = max(2, min(CANVAS[0] - width - 2, (CANVAS[0] - width) // 2 + rng.randint(-12, 12)))
    ty = CANVAS[1] - height - rng.randint(6, 12) - top
    ink = rng.choice(((20, 20, 20), (40, 30, 90), (90, 20, 20), (10, 60, 30)))
    draw.text((tx, ty), label, fill=ink, font=font)
    return canvas


# ---------------------------------------------------------------------------
# builder


def _did(n: int) -> str:
    return f"{DATASET_ID}:{n}"


class _Ids:
    def __init__(self) -> None:
        self.next = 1

    def __call__(self) -> str:
        value = _did(self.next)
        self.next += 1
        return value


def _assign_products(cfg: DemoConfig, rng: random.Random) -> tuple[list[Product], set[tuple]]:
    combos = list(product(SHAPES, COLOURS, [b.name for b in BRANDS]))
    rng.shuffle(combos)
    held_out = set(combos[: int(len(combos) * cfg.holdout_fraction)])
    products: list[Product] = []
    for split, count in (("train", cfg.n_train_products), ("test", cfg.n_test_products)):
        labels = easy_vqa_labels(split)
        ids = sorted(labels)
        rng.shuffle(ids)
        if len(ids) < count:
            raise ValueError(f"easy-vqa has {len(ids)} {split} images, asked for {count}")
        for n, image_id in enumerate(ids[:count]):
            shape, colour = labels[image_id]
            brands = [b.name for b in BRANDS]
            if split == "train":
                choices = [b for b in brands if (shape, colour, b) not in held_out]
            else:
                # a third of the test products show a combination training never saw
                unseen = [b for b in brands if (shape, colour, b) in held_out]
                choices = unseen if unseen and rng.random() < 0.33 else brands
            key = f"{split}_{n:05d}"
            products.append(
                Product(
                    key=key,
                    split=split,
                    source_image=image_id,
                    shape=shape,
                    colour=colour,
                    brand=rng.choice(choices),
                    price=rng.choice(PRICES),
                    img_path=f"{IMAGE_DIR}/{split}/{key}.png",
                )
            )
    return products, held_out


def _sample(items: list, n: int, rng: random.Random) -> list:
    return rng.sample(items, n) if len(items) > n else list(items)


def build_demo_corpus(
    out: Path,
    cfg: DemoConfig | None = None,
    *,
    force: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict:
    """Write the shapeshop demo corpus in M-BEIR layout.

    Args:
        out: the data root to write; created if missing. A non-empty folder that this
            builder did not write is refused, so a misconfigured path never overwrites data.
        cfg: sizes and seed.
        force: rebuild even when `out` already holds a corpus built with the same config.
        progress: wraps the image loop (e.g. `tqdm`), for a progress bar.

    Returns:
        A summary: counts per task and split, paths, and whether anything was (re)built.
    """
    cfg = cfg or DemoConfig()
    out = Path(out)
    marker = out / MARKER
    stamp = {"builder_version": BUILDER_VERSION, "config": asdict(cfg)}
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise FileExistsError(
                f"{out} is not empty and was not written by the demo builder; refusing to "
                "overwrite it. Point the demo at an empty folder."
            )
        previous = json.loads(marker.read_text())
        if previous.get("stamp") == stamp and not force:
            return {**previous["summary"], "rebuilt": False}
    rng = random.Random(cfg.seed)
    products, held_out = _assign_products(cfg, rng)
    brand_by_name = {b.name: b for b in BRANDS}

    # images
    paths = {s: easy_vqa_image_paths(s) for s in ("train", "test")}
    loop = progress(products) if progress else products
    for p in loop:
        target = out / p.img_path
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(paths[p.split][p.source_image]) as src:
            image_rng = random.Random(f"{cfg.seed}:{p.key}")
            compose_product(src, p.brand, image_rng).save(target)

    ids = _Ids()
    # shared text candidates: knowledge passages and catalogue entries
    passages: dict[tuple[str, str], Candidate] = {}
    for brand in BRANDS:
        for facet in FACETS:
            passages[(brand.name, facet)] = Candidate(
                did=ids(), modality=Modality.TEXT, txt=passage_text(brand, facet), img_path=None
            )
    catalogue: dict[tuple[str, str, str], Candidate] = {}
    for shape, colour, brand in product(SHAPES, COLOURS, BRANDS):
        catalogue[(shape, colour, brand.name)] = Candidate(
            did=ids(),
            modality=Modality.TEXT,
            txt=catalogue_text(shape, colour, brand),
            img_path=None,
        )
    # per-split image and image+text candidates
    photo: dict[str, Candidate] = {}
    listing: dict[str, Candidate] = {}
    for p in products:
        photo[p.key] = Candidate(did=ids(), modality=Modality.IMAGE, txt=None, img_path=p.img_path)
        listing[p.key] = Candidate(
            did=ids(),
            modality=Modality.IMAGE_TEXT,
            txt=listing_text(1000 + len(listing), p.price, rng),
            img_path=p.img_path,
        )

    queries: dict[int, dict[str, list[Query]]] = defaultdict(lambda: defaultdict(list))
    qn = {"n": 0}

    def add(task: int, split: str, modality: Modality, txt, img, positives) -> None:
        qn["n"] += 1
        queries[task][split].append(
            Query(
                qid=f"{DATASET_ID}:{qn['n']}",
                modality=modality,
                txt=txt,
                img_path=img,
                pos_cand_list=tuple(positives),
                split=split,
                task_id=task,
            )
        )

    for split in ("train", "test"):
        n_q = cfg.train_queries_per_task if split == "train" else cfg.test_queries_per_task
        split_products = [p for p in products if p.split == split]
        by_combo: dict[tuple[str, str, str], list[Product]] = defaultdict(list)
        for p in split_products:
            by_combo[(p.shape, p.colour, p.brand)].append(p)

        # task 0: text -> image
        for p in _sample(split_products, n_q, rng):
            text = rng.choice(T2I).format(
                colour=p.colour, shape=p.shape, brand=brand_by_name[p.brand].title
            )
            pos = [photo[o.key].did for o in by_combo[(p.shape, p.colour, p.brand)]]
            add(0, split, Modality.TEXT, text, None, pos)
        # task 1: text -> text (knowledge passages); train and test never share a phrasing
        t2t = [
            (brand, facet, template)
            for brand in BRANDS
            for facet in FACETS
            for template in (T2T[facet][:-1] if split == "train" else T2T[facet][-1:])
        ]
        for brand, facet, template in _sample(t2t, n_q, rng):
            text = template.format(founder=brand.founder, city=brand.city, year=brand.year)
            add(1, split, Modality.TEXT, text, None, [passages[(brand.name, facet)].did])
        # task 2: text -> (image, text) listings
        for p in _sample(split_products, n_q, rng):
            text = rng.choice(T2IT).format(
                colour=p.colour, shape=p.shape, brand=brand_by_name[p.brand].title, price=p.price
            )
            pos = [
                listing[o.key].did
                for o in by_combo[(p.shape, p.colour, p.brand)]
                if o.price == p.price
            ]
            add(2, split, Modality.TEXT, text, None, pos)
        # task 3: image -> text (catalogue entry)
        for p in _sample(split_products, n_q, rng):
            add(
                3,
                split,
                Modality.IMAGE,
                None,
                p.img_path,
                [catalogue[(p.shape, p.colour, p.brand)].did],
            )
        # task 6: (image, question) -> knowledge passage
        for p in _sample(split_products, n_q, rng):
            facet = rng.choice(FACETS)
            add(
                6,
                split,
                Modality.IMAGE_TEXT,
                rng.choice(QA[facet]),
                p.img_path,
                [passages[(p.brand, facet)].did],
            )
        # task 7: (image, instruction) -> modified product photo
        made = 0
        for p in rng.sample(split_products, len(split_products)):
            if made >= n_q:
                break
            options = []
            for c in COLOURS:
                if c != p.colour and by_combo.get((p.shape, c, p.brand)):
                    options.append(("colour", (p.shape, c, p.brand), {"colour": c}))
            for s in SHAPES:
                if s != p.shape and by_combo.get((s, p.colour, p.brand)):
                    options.append(("shape", (s, p.colour, p.brand), {"shape": s}))
            for b in BRANDS:
                if b.name != p.brand and by_combo.get((p.shape, p.colour, b.name)):
                    options.append(("brand", (p.shape, p.colour, b.name), {"brand": b.title}))
            if not options:
                continue
            kind, target, values = rng.choice(options)
            text = rng.choice(MOD[kind]).format(**values)
            add(
                7,
                split,
                Modality.IMAGE_TEXT,
                text,
                p.img_path,
                [photo[o.key].did for o in by_combo[target]],
            )
            made += 1

    # pools: test candidates per task (local), train candidates in the union train pool
    def split_photos(split: str) -> list[Candidate]:
        return [photo[p.key] for p in products if p.split == split]

    def split_listings(split: str) -> list[Candidate]:
        return [listing[p.key] for p in products if p.split == split]

    local_pools = {
        0: split_photos("test"),
        1: list(passages.values()),
        2: split_listings("test"),
        3: list(catalogue.values()),
        6: list(passages.values()),
        7: split_photos("test"),
    }
    union_train = (
        split_photos("train")
        + split_listings("train")
        + list(passages.values())
        + list(catalogue.values())
    )
    union_test: dict[str, Candidate] = {}
    for pool in local_pools.values():
        union_test.update({c.did: c for c in pool})

    summary: dict = {"data_root": str(out), "tasks": {}, "pools": {}}
    for task, pool in local_pools.items():
        name = f"mbeir_{DATASET}_task{task}_cand_pool"
        write_jsonl(out / "cand_pool" / "local" / f"{name}.jsonl", map(candidate_to_json, pool))
        summary["pools"][name] = len(pool)
    for split, pool in (("train", union_train), ("test", list(union_test.values()))):
        name = f"mbeir_union_{split}_cand_pool"
        write_jsonl(out / "cand_pool" / "global" / f"{name}.jsonl", map(candidate_to_json, pool))
        summary["pools"][name] = len(pool)
    for task, by_split in sorted(queries.items()):
        for split, rows in by_split.items():
            stem = f"mbeir_{DATASET}_task{task}_{split}"
            write_jsonl(out / "query" / split / f"{stem}.jsonl", map(query_to_json, rows))
            if split != "train":
                write_qrels(out / "qrels" / split / f"{stem}_qrels.txt", qrels_from_queries(rows))
            summary["tasks"].setdefault(f"mbeir_{DATASET}_task{task}", {})[split] = len(rows)
    _write_instructions(out / "instructions" / "query_instructions.tsv")

    truth = out.parent / f"{out.name}_truth" / "products.jsonl"
    write_jsonl(truth, (asdict(p) for p in products))
    summary.update(
        products=len(products),
        held_out_combinations=len(held_out),
        test_products_with_unseen_combination=sum(
            1 for p in products if p.split == "test" and (p.shape, p.colour, p.brand) in held_out
        ),
        truth_file=str(truth),
        fingerprint=_fingerprint(out),
    )
    marker.write_text(json.dumps({"stamp": stamp, "summary": summary}, indent=2))
    return {**summary, "rebuilt": True}


def _write_instructions(path: Path) -> None:
    rows = [
        ("text", "image", "Retrieve the product photo that matches the description."),
        ("text", "text", "Retrieve the passage that answers the question about a brand."),
        ("text", "image,text", "Retrieve the shop listing that matches the description."),
        ("image", "text", "Retrieve the catalogue entry of the product in the photo."),
        ("image,text", "text", "Retrieve the passage that answers the question about the photo."),
        ("image,text", "image", "Retrieve the product photo that the requested change describes."),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write("query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n")
        for qm, cm, prompt in rows:
            fh.write(f"{qm}\t{cm}\t{DATASET}\t{DATASET_ID}\t{prompt}\n")


def _fingerprint(root: Path) -> str:
    """A hash of every JSON/TSV/qrels file: changes whenever the corpus text changes."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in {".jsonl", ".txt", ".tsv"} and path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def truth_file_for(data_root: Path) -> Path:
    """Where the builder writes ground truth for a demo data root (outside it)."""
    return Path(data_root).parent / f"{Path(data_root).name}_truth" / "products.jsonl"


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
