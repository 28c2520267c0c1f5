"""What the trainer reads: queries with their positives and negatives, pools, as encoder items.

Built from one config's two tables (`pairs.PAIR_COLUMNS`, `pairs.CANDIDATE_COLUMNS`), so the
trainer never knows which sides were enhanced: the representation was chosen upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rar_pipeline.core.corpus.mbeir import resolve_in_root
from rar_pipeline.core.files import values_hash
from rar_pipeline.core.retrieval.encoders.base import EncodeItem


@dataclass(frozen=True)
class TrainQuery:
    """A train query: one of its positives is drawn per epoch."""

    qid: str
    item: EncodeItem
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()  # the corpus' own hard negatives
    pool: str = ""  # the pool of its first positive: mined negatives come from there


@dataclass(frozen=True)
class ValQuery:
    """A validation query, ranked against the pool its positives live in."""

    qid: str
    item: EncodeItem
    positives: frozenset[str]
    pool: str


@dataclass
class TrainingData:
    """Everything one training run reads.

    Attributes:
        train: train queries (one entry per query, all its positives).
        val: validation queries.
        candidates: did -> item, every candidate of every pool.
        pools: pool -> its dids, in table order.
        test_only: candidates only test queries point at: never a negative.
    """

    train: list[TrainQuery]
    val: list[ValQuery]
    candidates: dict[str, EncodeItem]
    pools: dict[str, list[str]]
    test_only: frozenset[str] = field(default_factory=frozenset)

    def labelled(self) -> dict[str, frozenset[str]]:
        """Map each train query id to every labelled positive of that train query."""
        return {q.qid: frozenset(q.positives) for q in self.train}

    def fingerprint(self) -> str:
        """A hash of the data: a resumed run must see exactly what it started with."""
        train = [
            (q.qid, q.item.txt, str(q.item.image_path), q.positives, q.negatives)
            for q in self.train
        ]
        val = [(q.qid, q.item.txt, str(q.item.image_path), sorted(q.positives)) for q in self.val]
        cands = [(d, i.txt, str(i.image_path)) for d, i in sorted(self.candidates.items())]
        return values_hash([repr(train), repr(val), repr(cands)])


def encode_item(txt: Any, img_path: Any, root: Path) -> EncodeItem:
    """A table row's text and image path (relative to `root`) as an encoder item."""
    text = txt if isinstance(txt, str) and txt else None
    image = resolve_in_root(root, img_path) if isinstance(img_path, str) and img_path else None
    return EncodeItem(text, image)


def home_pools(pools: dict[str, list[str]]) -> dict[str, str]:
    """Each candidate's home: the smallest pool holding it (ties: the first by name).

    M-BEIR ships a candidate in its task's local pool and again in union pools; a query is
    ranked against the home pool of its positive, which for M-BEIR is the task's local pool
    (UniIR's local setting), whatever order the pools were read in.
    """
    home: dict[str, str] = {}
    for pool in sorted(pools, key=lambda p: (len(pools[p]), p)):
        for did in pools[pool]:
            home.setdefault(did, pool)
    return home


def training_data(pairs: pd.DataFrame, candidates: pd.DataFrame, root: Path) -> TrainingData:
    """Group a config's pairs per query and turn every row into encoder items.

    Args:
        pairs: `pairs.PAIR_COLUMNS` rows (train and val).
        candidates: `pairs.CANDIDATE_COLUMNS` rows (every pool, this config's texts).
        root: the data root image paths are relative to.
    """
    items = {
        did: encode_item(txt, img, root)
        for did, txt, img in zip(
            candidates["did"], candidates["txt"], candidates["img_path"], strict=True
        )
    }
    pools: dict[str, list[str]] = {}
    for did, pool in zip(candidates["did"], candidates["pool"], strict=True):
        pools.setdefault(pool, []).append(did)
    pool_of = home_pools(pools)
    test_only = frozenset(candidates.loc[candidates["test_only"].astype(bool), "did"])
    train: list[TrainQuery] = []
    val: list[ValQuery] = []
    for (split, qid), rows in pairs.groupby(["split", "qid"], sort=True):
        first = rows.iloc[0]
        item = encode_item(first["query_txt"], first["query_img_path"], root)
        positives = tuple(d for d in rows["did"] if d in items)
        if not positives:
            continue
        if split == "train":
            negatives = tuple(d for d in first["neg_dids"] if d in items)
            train.append(TrainQuery(str(qid), item, positives, negatives, pool_of[positives[0]]))
        else:
            val.append(ValQuery(str(qid), item, frozenset(positives), pool_of[positives[0]]))
    return TrainingData(train, val, items, pools, test_only)
