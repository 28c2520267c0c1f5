"""Training pairs per ablation config: (query, positive) in the representation each config names.

| config | query side         | candidate side      |
|--------|--------------------|---------------------|
| none   | original text      | original text       |
| corpus | original text      | enhanced text       |
| query  | enhanced text      | original text       |
| full   | enhanced text      | enhanced text       |

Images stay on both sides wherever the item has one. One row per (query, positive) of the
train split's labels; the corpus' val split becomes the validation pairs, or, when there is
none, a seeded slice of train queries held out by query id. Hard negatives come from the
corpus' own `neg_cand_list`, never a labelled positive of that query and never a candidate
that only test queries point at. Test-split queries never produce a pair.

`represent_candidates` writes every pool's candidates in the config's representation
beside the pairs: validation ranks against them and mining draws negatives from them (never
from candidates that only test queries point at, flagged `test_only`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rar_pipeline.core.corpus.records import Candidate, Query

# Bump when the pair-building rules change: part of the training assets' code versions.
PAIRS_VERSION = "pairs-2"


@dataclass(frozen=True)
class AblationConfig:
    """Which sides of retrieval a config sees enhanced."""

    name: str
    enhanced_queries: bool
    enhanced_corpus: bool


CONFIGS: dict[str, AblationConfig] = {
    c.name: c
    for c in (
        AblationConfig("none", enhanced_queries=False, enhanced_corpus=False),
        AblationConfig("corpus", enhanced_queries=False, enhanced_corpus=True),
        AblationConfig("query", enhanced_queries=True, enhanced_corpus=False),
        AblationConfig("full", enhanced_queries=True, enhanced_corpus=True),
    )
}
PAIR_COLUMNS = [
    "qid",
    "split",  # train | val
    "task_id",
    "query_txt",
    "query_img_path",
    "did",
    "cand_txt",
    "cand_img_path",
    "neg_dids",
]
CANDIDATE_COLUMNS = ["did", "pool", "modality", "txt", "img_path", "test_only"]


@dataclass
class Pairs:
    """The pairs of one config and what was left out, for metadata."""

    frame: pd.DataFrame
    counts: dict[str, Any] = field(default_factory=dict)


def _held_out(qid: str, seed: int, fraction: float) -> bool:
    """A stable coin per query id: the same queries are held out on every run."""
    digest = hashlib.sha256(f"{seed}:{qid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_pairs(
    config: AblationConfig,
    queries: Sequence[Query],
    candidates: Mapping[str, Candidate],
    enhanced_queries: Mapping[str, str | None] | None = None,
    enhanced_corpus: Mapping[str, str | None] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Pairs:
    """Training and validation pairs for one ablation config.

    Args:
        config: which sides are enhanced.
        queries: every query of every task, all splits (test ones only to protect them).
        candidates: did -> candidate, across all pools.
        enhanced_queries: `Query.key` -> enhanced text (needed when the config enhances
            queries); a query without one keeps its own text.
        enhanced_corpus: did -> enhanced text (needed when the config enhances the corpus).
        val_fraction: share of train queries held out when the corpus has no val split.
        seed: which train queries are held out.

    Returns:
        The pairs (`PAIR_COLUMNS`) and counts of what went where.

    Raises:
        ValueError: an enhanced side was asked for without its texts.
    """
    if config.enhanced_queries and enhanced_queries is None:
        raise ValueError(f"config {config.name!r} needs the enhanced queries")
    if config.enhanced_corpus and enhanced_corpus is None:
        raise ValueError(f"config {config.name!r} needs the enhanced corpus")
    learn = [q for q in queries if q.split in ("train", "val")]
    has_val = any(q.split == "val" for q in learn)
    test_only = test_only_candidates(queries)

    def cand_text(c: Candidate) -> str | None:
        return candidate_text(config, c, enhanced_corpus)

    rows: list[list[Any]] = []
    missing_positives = dropped_negatives = 0
    for q in learn:
        split = q.split if has_val else ("val" if _held_out(q.qid, seed, val_fraction) else "train")
        positives = set(q.pos_cand_list)
        negatives = [
            d
            for d in q.neg_cand_list
            if d in candidates and d not in positives and d not in test_only
        ]
        dropped_negatives += len(q.neg_cand_list) - len(negatives)
        for did in q.pos_cand_list:
            cand = candidates.get(did)
            if cand is None:
                missing_positives += 1
                continue
            rows.append(
                [
                    q.qid,
                    split,
                    q.task_id,
                    query_text(
                        config, q.txt, enhanced_queries.get(q.key) if enhanced_queries else None
                    ),
                    q.img_path,
                    did,
                    cand_text(cand),
                    cand.img_path,
                    negatives,
                ]
            )
    frame = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return Pairs(
        frame,
        {
            "pairs_train": int((frame["split"] == "train").sum()),
            "pairs_val": int((frame["split"] == "val").sum()),
            "queries": len({(q.split, q.qid) for q in learn}),
            "validation": "the corpus' val split" if has_val else f"{val_fraction:.0%} of train",
            "positives_in_no_pool": missing_positives,
            "negatives_left_out": dropped_negatives,
        },
    )


def test_only_candidates(queries: Sequence[Query]) -> set[str]:
    """Candidates that only test queries label positive: kept out of all training signal."""
    learned = {d for q in queries if q.split in ("train", "val") for d in q.pos_cand_list}
    return {d for q in queries if q.split == "test" for d in q.pos_cand_list} - learned


def pair_leaks(
    pairs: pd.DataFrame, candidates: pd.DataFrame, queries: Sequence[Query]
) -> dict[str, list[str]]:
    """What of the test split reached a config's training pairs (nothing, when sound).

    Checked independently of how the pairs were built: a pair from the test split, a pair
    whose task, text and image are a test query's (a pair's text is the config's
    representation, so for configs that enhance queries this catches the text-only
    ones), a positive or a hard negative that only test queries label. A train query
    that shares a test query's qid or image with other words is no leak: M-BEIR reuses
    qids across splits, and images across queries.

    Args:
        pairs: the config's pairs (`PAIR_COLUMNS`).
        candidates: its candidates table (`CANDIDATE_COLUMNS`, with `test_only`).
        queries: every ingested query, every split.

    Returns:
        kind -> offending ids (qids, or dids), each list empty when nothing leaked.
    """
    tests = [q for q in queries if q.split == "test"]
    by_text = {(q.task_id, q.txt or "", q.img_path or "") for q in tests}
    test_only = set(candidates.loc[candidates["test_only"].astype(bool), "did"]) | (
        test_only_candidates(queries)
    )
    images = pairs["query_img_path"].fillna("").tolist()
    tasks, qids, texts = pairs["task_id"].tolist(), pairs["qid"].tolist(), pairs["query_txt"]
    texts = texts.fillna("").tolist()
    same = [
        qid
        for task, qid, text, image in zip(tasks, qids, texts, images, strict=True)
        if (task, text, image) in by_text
    ]
    return {
        "test_split_pairs": sorted(set(pairs.loc[~pairs["split"].isin(["train", "val"]), "qid"])),
        "test_query_content": sorted(set(same)),
        "test_only_positives": sorted(set(pairs["did"]) & test_only),
        "test_only_negatives": sorted({d for negs in pairs["neg_dids"] for d in negs} & test_only),
    }


def query_text(config: AblationConfig, txt: str | None, enhanced: str | None) -> str | None:
    """A query's text as `config` sees it (its own text when it has no enhanced one)."""
    if config.enhanced_queries and enhanced:
        return enhanced
    return txt


def candidate_text(
    config: AblationConfig, candidate: Candidate, enhanced_corpus: Mapping[str, str | None] | None
) -> str | None:
    """A candidate's text as `config` sees it (its own text when it has no enhanced one)."""
    if config.enhanced_corpus and enhanced_corpus is not None:
        return enhanced_corpus.get(candidate.did) or candidate.txt
    return candidate.txt


def represent_candidates(
    config: AblationConfig,
    pools: Mapping[str, Sequence[Candidate]],
    queries: Sequence[Query],
    enhanced_corpus: Mapping[str, str | None] | None = None,
) -> pd.DataFrame:
    """Every candidate of every pool in `config`'s representation (`CANDIDATE_COLUMNS`).

    Args:
        config: which sides are enhanced.
        pools: pool shard -> its candidates.
        queries: every query (to flag candidates only test queries point at).
        enhanced_corpus: did -> enhanced text (needed when the config enhances the corpus).
    """
    if config.enhanced_corpus and enhanced_corpus is None:
        raise ValueError(f"config {config.name!r} needs the enhanced corpus")
    test_only = test_only_candidates(queries)
    rows = [
        [
            c.did,
            pool,
            str(c.modality),
            candidate_text(config, c, enhanced_corpus),
            c.img_path,
            c.did in test_only,
        ]
        for pool, candidates in pools.items()
        for c in candidates
    ]
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
