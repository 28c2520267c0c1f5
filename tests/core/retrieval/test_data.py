"""What the trainer reads: one entry per query, items resolved inside the data root, home pools."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rar_pipeline.core.retrieval.data import home_pools, training_data
from rar_pipeline.core.retrieval.pairs import CANDIDATE_COLUMNS, PAIR_COLUMNS

CANDIDATES = pd.DataFrame(
    [
        ["p1", "local_task6", "text", "Passage one.", None, False],
        ["p2", "local_task6", "text", "Passage two.", None, False],
        ["p1", "union", "text", "Passage one.", None, False],
        ["p2", "union", "text", "Passage two.", None, False],
        ["i1", "union", "image", None, "img/1.png", False],
        ["t1", "union", "text", "A test answer.", None, True],
    ],
    columns=CANDIDATE_COLUMNS,
)


def _pair(qid, split, did, neg=()):
    return [qid, split, 6, "who made this?", "img/q.png", did, "x", None, list(neg),
            f"{split}/{qid}"]  # fmt: skip


PAIRS = pd.DataFrame(
    [
        _pair("q1", "train", "p1", ["p2", "nowhere"]),
        _pair("q1", "train", "p2", ["p2", "nowhere"]),
        _pair("q2", "train", "i1"),
        _pair("q3", "val", "p2"),
        _pair("q4", "train", "gone"),  # its only positive is in no pool
    ],
    columns=PAIR_COLUMNS,
)


def test_a_candidate_lives_in_the_smallest_pool_that_holds_it():
    pools = {"union": ["p1", "p2", "i1"], "local_task6": ["p1", "p2"]}
    assert home_pools(pools) == {"p1": "local_task6", "p2": "local_task6", "i1": "union"}


def test_pairs_become_one_entry_per_query_with_all_its_positives(tmp_path: Path):
    data = training_data(PAIRS, CANDIDATES, tmp_path)
    train = {q.qid: q for q in data.train}
    assert set(train) == {"q1", "q2"}  # q4 has nothing to learn towards
    assert train["q1"].positives == ("p1", "p2") and train["q1"].pool == "local_task6"
    assert train["q1"].negatives == ("p2",)  # unknown ids left out
    assert train["q2"].pool == "union"
    assert train["q1"].item.image_path == tmp_path / "img" / "q.png"
    (val,) = data.val
    assert val.qid == "q3" and val.positives == {"p2"} and val.pool == "local_task6"
    assert data.test_only == {"t1"} and data.pools["union"] == ["p1", "p2", "i1", "t1"]
    assert data.labelled()["q1"] == {"p1", "p2"}


def test_an_image_path_that_leaves_the_data_root_is_refused(tmp_path: Path):
    bad = PAIRS.copy()
    bad.loc[0, "query_img_path"] = "../../etc/passwd"
    with pytest.raises(ValueError, match="leaves the data root"):
        training_data(bad, CANDIDATES, tmp_path)


def test_the_fingerprint_follows_the_data(tmp_path: Path):
    one = training_data(PAIRS, CANDIDATES, tmp_path).fingerprint()
    assert one == training_data(PAIRS, CANDIDATES, tmp_path).fingerprint()
    changed = PAIRS.copy()
    changed.loc[0, "query_txt"] = "who designed this?"
    assert training_data(changed, CANDIDATES, tmp_path).fingerprint() != one
