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

A test label is a test query's content (its raw text and image) with one of its positives.
Real corpora repeat short queries across splits with other targets (COCO's captions recur
word for word across images), so a train or val query that says what a test query says
still trains: only a pair whose positive is one of that test query's positives would reveal
its label, and is left out. So is such a hard negative: pushing a test query's own positive
away from its words trains on its label as surely, with the sign flipped. Both are listed
(`LEFT_OUT_COLUMNS`, with the test query and why); a corpus whose train split is a copy of
its test split therefore trains on nothing and is evaluated zero-shot. `pair_leaks` audits
the same rule from the queries, independently of the builder.

`represent_candidates` writes every pool's candidates in the config's representation
beside the pairs: validation ranks against them and mining draws negatives from them (never
from candidates that only test queries point at, flagged `test_only`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rar_pipeline.core.corpus.records import Candidate, Query
from rar_pipeline.core.files import write_atomic

# Bump when the pair-building rules change: part of the training assets' code versions.
PAIRS_VERSION = "pairs-3"


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
    # the source query's `Query.key` ("train/9:1"): a held-out train query's pairs say
    # split "val", and `query_txt` may be a rewrite, so this is how the audit finds its words
    "query_key",
]
CANDIDATE_COLUMNS = ["did", "pool", "modality", "txt", "img_path", "test_only"]
# what the builder left out because it would reveal a test label, one row per (query, did)
LEFT_OUT_COLUMNS = ["qid", "query_key", "task_id", "did", "role", "test_qid", "reason"]
_REASONS = {
    "positive": "repeats test query {test} (same text and image) with that query's positive: "
    "the pair is its test label",
    "hard negative": "a positive of test query {test}, which this query repeats (same text and "
    "image): the negative is its test label",
}

Content = tuple[str, str]


def query_content(q: Query) -> Content:
    """What a query says: its raw text and image (never a config's rewrite of them).

    Not its task id: the retriever never sees it (an encoder's instruction follows the
    item's modality), so the same words and image with a test query's positive are that
    test label whatever task the row is filed under, or none (train rows may lack one).
    """
    return (q.txt or "", q.img_path or "")


@dataclass
class Pairs:
    """The pairs of one config, what was left out (`LEFT_OUT_COLUMNS`), counts for metadata."""

    frame: pd.DataFrame
    counts: dict[str, Any] = field(default_factory=dict)
    left_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LEFT_OUT_COLUMNS))


def _held_out(qid: str, seed: int, fraction: float) -> bool:
    """A stable coin per query id: the same queries are held out on every run."""
    digest = hashlib.sha256(f"{seed}:{qid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def test_labels(queries: Sequence[Query]) -> dict[Content, dict[str, str]]:
    """Every test label by content: content -> {positive did: the first test qid labelling it}."""
    labels: dict[Content, dict[str, str]] = {}
    for q in queries:
        if q.split == "test":
            by_did = labels.setdefault(query_content(q), {})
            for did in q.pos_cand_list:
                by_did.setdefault(did, q.qid)
    return labels


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
    """Training and validation pairs for one ablation config, without any test label.

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
        The pairs (`PAIR_COLUMNS`), the positives and hard negatives left out because they
        would reveal a test label (`LEFT_OUT_COLUMNS`), and counts of what went where.

    Raises:
        ValueError: an enhanced side was asked for without its texts.
    """
    if config.enhanced_queries and enhanced_queries is None:
        raise ValueError(f"config {config.name!r} needs the enhanced queries")
    if config.enhanced_corpus and enhanced_corpus is None:
        raise ValueError(f"config {config.name!r} needs the enhanced corpus")
    learn = [q for q in queries if q.split in ("train", "val")]
    has_val = any(q.split == "val" for q in learn)
    labels, test_only = test_labels(queries), test_only_candidates(queries)
    rows: list[list[Any]] = []
    left_out: list[list[Any]] = []
    missing_positives = dropped_negatives = repeats = 0
    for q in learn:
        split = q.split if has_val else ("val" if _held_out(q.qid, seed, val_fraction) else "train")
        revealed = labels.get(query_content(q), {})  # this query's words' test labels
        repeats += bool(revealed)
        negatives, revealing = _hard_negatives(q, candidates, test_only, revealed)
        dropped_negatives += len(q.neg_cand_list) - len(negatives)
        left_out += [_left_out(q, d, "hard negative", revealed[d]) for d in revealing]
        text = query_text(config, q.txt, enhanced_queries.get(q.key) if enhanced_queries else None)
        for did in q.pos_cand_list:
            cand = candidates.get(did)
            if did in revealed:
                left_out.append(_left_out(q, did, "positive", revealed[did]))
            elif cand is None:
                missing_positives += 1
            else:
                rows.append([q.qid, split, q.task_id, text, q.img_path, did,
                             candidate_text(config, cand, enhanced_corpus), cand.img_path,
                             negatives, q.key])  # fmt: skip
    frame = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    gone = pd.DataFrame(left_out, columns=LEFT_OUT_COLUMNS)
    counts = {
        "pairs_train": int((frame["split"] == "train").sum()),
        "pairs_val": int((frame["split"] == "val").sum()),
        "queries": len({(q.split, q.qid) for q in learn}),
        "validation": "the corpus' val split" if has_val else f"{val_fraction:.0%} of train",
        "positives_in_no_pool": missing_positives,
        "negatives_left_out": dropped_negatives,
        "queries_repeating_a_test_query": repeats,
        "pairs_left_out": int((gone["role"] == "positive").sum()),
        "negatives_revealing_a_test_label": int((gone["role"] == "hard negative").sum()),
    }
    return Pairs(frame, counts, gone)


def _hard_negatives(
    q: Query, candidates: Mapping[str, Candidate], test_only: set[str], revealed: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """A query's usable hard negatives, and those left out as a test label it repeats."""
    positives = set(q.pos_cand_list)
    known = [d for d in q.neg_cand_list if d in candidates and d not in positives]
    keep = [d for d in known if d not in revealed and d not in test_only]
    return keep, [d for d in known if d in revealed]


def _left_out(q: Query, did: str, role: str, test_qid: str) -> list[Any]:
    return [q.qid, q.key, q.task_id, did, role, test_qid, _REASONS[role].format(test=test_qid)]


def no_train_pairs_reason(left_out: pd.DataFrame, listed_in: Path | str) -> str:
    """Why a config has no train pairs to train on (its pairs' left-out list says which)."""
    revealing = int((left_out["role"] == "positive").sum()) if len(left_out) else 0
    if not revealing:
        return "no train pairs: the corpus has no train split with resolvable positives"
    return (
        f"no train pairs: {revealing} left out because each would reveal a test label (listed "
        f"in {listed_in}); evaluated zero-shot with the untrained base encoder"
    )


def write_left_out(left_out: pd.DataFrame, path: Path) -> Path:
    """The left-out list as JSON lines (empty when nothing was left out: the file says so)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _records(left_out))
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_left_out(path: Path) -> pd.DataFrame:
    """A left-out list written by `write_left_out` (empty when there is none)."""
    if not Path(path).is_file():
        return pd.DataFrame(columns=LEFT_OUT_COLUMNS)
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return pd.DataFrame(rows, columns=LEFT_OUT_COLUMNS)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if pd.isna(v) else int(v) if k == "task_id" else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def test_only_candidates(queries: Sequence[Query]) -> set[str]:
    """Candidates that only test labels point at: kept out of all training signal.

    A train or val row that repeats a test query's content with one of its positives is
    that test label again (and left out of the pairs), so it teaches no candidate.
    """
    labels = test_labels(queries)
    learned = {
        d
        for q in queries
        if q.split in ("train", "val")
        for d in q.pos_cand_list
        if d not in labels.get(query_content(q), {})
    }
    return {d for q in queries if q.split == "test" for d in q.pos_cand_list} - learned


def _task(value: Any) -> int | None:
    """A task id as `Query.task_id` holds it (a Parquet column may hold floats or NaN)."""
    return None if value is None or pd.isna(value) else int(value)


LEAK_KINDS = (
    "test_split_pairs",
    "untraced_pairs",
    "test_label_positives",
    "test_label_negatives",
    "test_only_positives",
    "test_only_negatives",
)


def pair_leaks(
    pairs: pd.DataFrame, candidates: pd.DataFrame, queries: Sequence[Query]
) -> dict[str, list[str]]:
    """What of the test split reached a config's training pairs (nothing, when sound).

    Checked from the queries and the candidates table, not from what the builder decided:
    each pair's own query is found again by its task and `query_key` (for configs that
    enhance queries `query_txt` is a rewrite, which says nothing about the raw words).

    Kinds (each a sorted list, empty when nothing leaked):
    - test_split_pairs: qids of pairs from a test query (by the pair's split or its source's).
    - untraced_pairs: `query_key`s that name no ingested query: nothing vouches for them.
    - test_label_positives: "<query_key> <did>" of pairs that are a test label (their query
      says what a test query says, text and image, and the positive is one of its).
    - test_label_negatives: the same for a hard negative.
    - test_only_positives, test_only_negatives: dids that only test labels point at.

    A train query that says what a test query says with other positives is no leak (real
    corpora repeat short queries across splits), nor one that shares a test query's qid or
    image with other words (M-BEIR reuses qids across splits, and images across queries).

    Args:
        pairs: the config's pairs (`PAIR_COLUMNS`).
        candidates: its candidates table (`CANDIDATE_COLUMNS`, with `test_only`).
        queries: every ingested query, every split.

    Returns:
        kind -> offending ids, each list empty when nothing leaked.
    """
    test_label = {(*query_content(q), d) for q in queries if q.split == "test"
                  for d in q.pos_cand_list}  # fmt: skip
    sources: dict[tuple[int | None, str], list[Query]] = {}
    for q in queries:
        sources.setdefault((q.task_id, q.key), []).append(q)
    test_only = set(candidates.loc[candidates["test_only"].astype(bool), "did"]) | (
        test_only_candidates(queries)
    )
    leaks: dict[str, set[str]] = {k: set() for k in LEAK_KINDS}
    columns = ["qid", "split", "task_id", "query_key", "did", "neg_dids"]
    for qid, split, task, key, did, negs in pairs[columns].itertuples(index=False, name=None):
        found = sources.get((_task(task), key), [])
        if split not in ("train", "val") or any(q.split == "test" for q in found):
            leaks["test_split_pairs"].add(qid)
        if not found:
            leaks["untraced_pairs"].add(str(key))
        said = {query_content(q) for q in found}  # one, unless a corpus repeats a qid
        if any((*c, did) in test_label for c in said):
            leaks["test_label_positives"].add(f"{key} {did}")
        leaks["test_label_negatives"] |= {
            f"{key} {d}" for d in negs for c in said if (*c, d) in test_label
        }
    leaks["test_only_positives"] = set(pairs["did"]) & test_only
    leaks["test_only_negatives"] = {d for negs in pairs["neg_dids"] for d in negs} & test_only
    return {kind: sorted(ids) for kind, ids in leaks.items()}


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
