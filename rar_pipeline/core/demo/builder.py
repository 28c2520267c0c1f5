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
root (`core.layout.demo_truth_file`); the corpus itself holds only what a real corpus
would: items, queries, qrels. Nothing that enhances an item needs or reads the truth file.

(~410 lines: the task table above and one function per part of the corpus; the world it
draws from is `world.py`, the images `compose.py`.)
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

from PIL import Image

from rar_pipeline.core.corpus.mbeir import (
    candidate_to_json,
    instructions_file,
    pool_file,
    qrels_file,
    qrels_from_queries,
    query_file,
    query_to_json,
    write_jsonl,
    write_qrels,
)
from rar_pipeline.core.corpus.records import Candidate, Modality, Query
from rar_pipeline.core.demo.compose import compose_product, easy_vqa_image_paths, easy_vqa_labels
from rar_pipeline.core.demo.world import (
    BRANDS,
    COLOURS,
    DATASET,
    DATASET_ID,
    FACETS,
    MOD,
    PRICES,
    QA,
    SHAPES,
    T2I,
    T2IT,
    T2T,
    Brand,
    catalogue_text,
    listing_text,
    passage_text,
)
from rar_pipeline.core.files import files_hash
from rar_pipeline.core.layout import demo_truth_file

BUILDER_VERSION = 3  # 3: train queries repeating a test query's words are kept again
MARKER = ".rar_demo.json"
IMAGE_DIR = f"mbeir_images/{DATASET}_images"


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


@dataclass
class _Items:
    """The demo's candidates, by what they show."""

    passages: dict[tuple[str, str], Candidate]  # (brand, facet) -> knowledge passage
    catalogue: dict[tuple[str, str, str], Candidate]  # (shape, colour, brand) -> entry
    photo: dict[str, Candidate]  # product key -> image-only candidate
    listing: dict[str, Candidate]  # product key -> image+text shop listing


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


def _write_images(out: Path, products: list[Product], seed: int, progress: Callable | None) -> None:
    paths = {s: easy_vqa_image_paths(s) for s in ("train", "test")}
    for p in progress(products) if progress else products:
        target = out / p.img_path
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(paths[p.split][p.source_image]) as src:
            compose_product(src, p.brand, random.Random(f"{seed}:{p.key}")).save(target)


def _make_items(products: list[Product], rng: random.Random) -> _Items:
    ids = _Ids()
    # shared text candidates: knowledge passages and catalogue entries
    passages = {
        (brand.name, facet): Candidate(
            did=ids(), modality=Modality.TEXT, txt=passage_text(brand, facet), img_path=None
        )
        for brand in BRANDS
        for facet in FACETS
    }
    catalogue = {
        (shape, colour, brand.name): Candidate(
            did=ids(),
            modality=Modality.TEXT,
            txt=catalogue_text(shape, colour, brand),
            img_path=None,
        )
        for shape, colour, brand in product(SHAPES, COLOURS, BRANDS)
    }
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
    return _Items(passages, catalogue, photo, listing)


def _modification_target(
    p: Product, by_combo: dict, rng: random.Random
) -> tuple[str, tuple[str, str, str], dict[str, str]] | None:
    """A change of one attribute that leads to products that exist, or None."""
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
    return rng.choice(options) if options else None


def _make_queries(
    cfg: DemoConfig, products: list[Product], items: _Items, rng: random.Random
) -> dict[int, dict[str, list[Query]]]:
    """Every task's queries per split (rng draws in a fixed order: the corpus is seeded)."""
    brand_by_name: dict[str, Brand] = {b.name: b for b in BRANDS}
    queries: dict[int, dict[str, list[Query]]] = defaultdict(lambda: defaultdict(list))
    counter = iter(range(1, 1 << 30))

    def add(task: int, split: str, modality: Modality, txt, img, positives) -> None:
        queries[task][split].append(
            Query(
                qid=f"{DATASET_ID}:{next(counter)}",
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

        def same(p: Product, by_combo: dict = by_combo) -> list[Product]:
            return by_combo[(p.shape, p.colour, p.brand)]

        # task 0: text -> image
        for p in _sample(split_products, n_q, rng):
            brand = brand_by_name[p.brand].title
            text = rng.choice(T2I).format(colour=p.colour, shape=p.shape, brand=brand)
            add(0, split, Modality.TEXT, text, None, [items.photo[o.key].did for o in same(p)])
        # task 1: text -> text (knowledge passages); train and test never share a phrasing
        t2t = [
            (brand, facet, template)
            for brand in BRANDS
            for facet in FACETS
            for template in (T2T[facet][:-1] if split == "train" else T2T[facet][-1:])
        ]
        for brand, facet, template in _sample(t2t, n_q, rng):
            text = template.format(founder=brand.founder, city=brand.city, year=brand.year)
            add(1, split, Modality.TEXT, text, None, [items.passages[(brand.name, facet)].did])
        # task 2: text -> (image, text) listings
        for p in _sample(split_products, n_q, rng):
            text = rng.choice(T2IT).format(
                colour=p.colour, shape=p.shape, brand=brand_by_name[p.brand].title, price=p.price
            )
            pos = [items.listing[o.key].did for o in same(p) if o.price == p.price]
            add(2, split, Modality.TEXT, text, None, pos)
        # task 3: image -> text (catalogue entry)
        for p in _sample(split_products, n_q, rng):
            entry = items.catalogue[(p.shape, p.colour, p.brand)]
            add(3, split, Modality.IMAGE, None, p.img_path, [entry.did])
        # task 6: (image, question) -> knowledge passage
        for p in _sample(split_products, n_q, rng):
            facet = rng.choice(FACETS)
            passage = items.passages[(p.brand, facet)]
            add(6, split, Modality.IMAGE_TEXT, rng.choice(QA[facet]), p.img_path, [passage.did])
        # task 7: (image, instruction) -> modified product photo
        made = 0
        for p in rng.sample(split_products, len(split_products)):
            if made >= n_q:
                break
            change = _modification_target(p, by_combo, rng)
            if change is None:
                continue
            kind, target, values = change
            text = rng.choice(MOD[kind]).format(**values)
            pos = [items.photo[o.key].did for o in by_combo[target]]
            add(7, split, Modality.IMAGE_TEXT, text, p.img_path, pos)
            made += 1
    # Train and test products share attributes and phrasings, so some train queries say
    # word for word what a test query says, with other positives (other products): as in
    # real corpora (COCO's captions recur across images). They stay; the pair builder keeps
    # them and leaves out only a pair that would reveal a test label.
    return queries


def _pools(products: list[Product], items: _Items) -> dict[tuple[str, str], list[Candidate]]:
    """(scope, pool name) -> candidates: each task's test pool, and the union pools."""

    def of_split(by_key: dict[str, Candidate], split: str) -> list[Candidate]:
        return [by_key[p.key] for p in products if p.split == split]

    passages, catalogue = list(items.passages.values()), list(items.catalogue.values())
    local = {
        0: of_split(items.photo, "test"),
        1: passages,
        2: of_split(items.listing, "test"),
        3: catalogue,
        6: passages,
        7: of_split(items.photo, "test"),
    }
    pools = {("local", f"mbeir_{DATASET}_task{t}_cand_pool"): pool for t, pool in local.items()}
    union_test: dict[str, Candidate] = {}
    for pool in local.values():
        union_test.update({c.did: c for c in pool})
    # train-split positives live in the union train pool, as in M-BEIR
    union_train = of_split(items.photo, "train") + of_split(items.listing, "train")
    pools[("global", "mbeir_union_train_cand_pool")] = union_train + passages + catalogue
    pools[("global", "mbeir_union_test_cand_pool")] = list(union_test.values())
    return pools


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
    _write_images(out, products, cfg.seed, progress)
    items = _make_items(products, rng)
    queries = _make_queries(cfg, products, items, rng)

    summary: dict = {"data_root": str(out), "tasks": {}, "pools": {}}
    for (scope, name), pool in _pools(products, items).items():
        write_jsonl(pool_file(out, name, scope), map(candidate_to_json, pool))
        summary["pools"][name] = len(pool)
    for task, by_split in sorted(queries.items()):
        name = f"mbeir_{DATASET}_task{task}"
        for split, rows in by_split.items():
            write_jsonl(query_file(out, name, split), map(query_to_json, rows))
            if split != "train":
                write_qrels(qrels_file(out, name, split), qrels_from_queries(rows))
            summary["tasks"].setdefault(name, {})[split] = len(rows)
    _write_instructions(instructions_file(out))

    truth = demo_truth_file(out)
    write_jsonl(truth, (asdict(p) for p in products))
    summary.update(
        products=len(products),
        held_out_combinations=len(held_out),
        test_products_with_unseen_combination=sum(
            1 for p in products if p.split == "test" and (p.shape, p.colour, p.brand) in held_out
        ),
        truth_file=str(truth),
        content_hash=files_hash(
            sorted(p for p in out.rglob("*") if p.suffix in {".jsonl", ".txt", ".tsv"}),
            relative_to=out,
        ),
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
