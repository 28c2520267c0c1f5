import numpy as np
import pytest

from rar_pipeline.core.evaluation.metrics import per_query
from rar_pipeline.core.evaluation.trec import (
    TIE_STEP,
    format_run,
    read_qrels,
    read_run,
    strictly_decreasing,
    write_qrels,
    write_run,
)


def test_ties_are_stepped_down_in_rank_order():
    scores = strictly_decreasing([0.9, 0.9, 0.9, 0.5, 0.7, 0.0, 0.0])
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False))
    assert scores[0] == float(np.float32(0.9)) and scores[1] < scores[0]
    assert scores[3] == 0.5 and scores[4] < 0.5  # an out-of-order score is pushed below
    assert scores[6] == -float(TIE_STEP)  # near zero too: a denormal step would not survive
    # every score is a float32 value (what pytrec_eval compares)
    assert all(float(np.float32(s)) == s for s in scores)


@pytest.mark.parametrize("tied", [0.0, 0.5, 0.99999994, -0.3])
def test_tie_broken_scores_survive_a_trip_through_text_and_trec_eval(tmp_path, tied):
    """trec_eval re-reads the file: the order it sees must be the run's order."""
    ranking = [(f"d{i}", tied) for i in range(12)]  # all tied: trec_eval would sort by id
    ranking += [("d12", tied - 1e-9)]  # below float32 resolution: a tie too
    path = write_run(tmp_path / "r.trec", {"q": ranking}, "r")
    run = read_run(path)
    for i in (0, 5, 12):
        figures = per_query({"q": {f"d{i}": 1}}, run)
        assert figures.loc["q", "recall_at_1"] == (1.0 if i == 0 else 0.0)
        assert figures.loc["q", "recall_at_10"] == (1.0 if i < 10 else 0.0)


def test_run_lines_have_six_columns_ranks_from_one_and_decreasing_scores(tmp_path):
    path = write_run(
        tmp_path / "runs" / "t.trec",
        {"9:1": [("9:10", 0.8), ("9:11", 0.8)], "9:2": [("9:12", 0.1)]},
        "rar-full-local",
    )
    lines = [line.split() for line in path.read_text().splitlines()]
    assert [row[:4] for row in lines] == [
        ["9:1", "Q0", "9:10", "1"],
        ["9:1", "Q0", "9:11", "2"],
        ["9:2", "Q0", "9:12", "1"],
    ]
    assert all(row[5] == "rar-full-local" for row in lines)
    assert float(lines[0][4]) > float(lines[1][4])
    f32 = [float(np.float32(v)) for v in (0.8, 0.1)]
    assert read_run(path) == {
        "9:1": {"9:10": f32[0], "9:11": float(lines[1][4])},
        "9:2": {"9:12": f32[1]},
    }


def test_an_unranked_query_writes_no_line():
    assert format_run({"q": []}, "r") == ""


@pytest.mark.parametrize("bad", ["has space", "tab\there", ""])
def test_ids_with_whitespace_are_refused(bad):
    with pytest.raises(ValueError, match="whitespace"):
        format_run({bad or "q": [("d" if bad else "", 1.0)]}, "r")


def test_qrels_have_trec_evals_four_columns(tmp_path):
    path = write_qrels(tmp_path / "t.qrels", {"9:1": {"9:10": 1, "9:11": 1}})
    assert path.read_text().splitlines() == ["9:1 0 9:10 1", "9:1 0 9:11 1"]
    assert read_qrels(path) == {"9:1": {"9:10": 1, "9:11": 1}}


def test_reading_a_malformed_run_names_the_line(tmp_path):
    path = tmp_path / "bad.trec"
    path.write_text("q Q0 d 1 0.5 r\nq Q0 d2 2 0.4\n")
    with pytest.raises(ValueError, match=r"bad.trec:2: expected 6 columns"):
        read_run(path)
