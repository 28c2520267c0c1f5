"""The ablation end to end on a tiny corpus: a word encoder, real LanceDB, real files."""

import pandas as pd
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.evaluation.evaluate import (
    evaluate_ablation,
    task_pools,
    union_pool,
)
from rar_pipeline.core.evaluation.report import markdown, read_report, text_table
from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.build import update_index
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.index.rows import Provenance, index_rows
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.defs.resources import LanceDBResource
from tests.run_files import recall_from_files
from tests.word_encoder import WordEncoder

PLAN = AnnPlan()


class TestTaskPools:
    POOLS = {
        "mbeir_a_task0_cand_pool": ["a1", "a2"],
        "side_pool": ["b1", "b2"],
        "mbeir_union_test_cand_pool": ["a1", "a2", "b1", "b2", "c1"],
        "mbeir_union_train_cand_pool": ["t1", "t2", "t3"],
    }

    def test_a_pool_named_after_the_task_is_its_own(self):
        pools = task_pools({"mbeir_a_task0": [["t1"], ["t2"]]}, self.POOLS)
        assert pools == {"mbeir_a_task0": "mbeir_a_task0_cand_pool"}

    def test_otherwise_the_local_pool_most_positives_live_in(self):
        # train positives live only in the union train pool; test ones in side_pool
        labels = {"other_task": [["t1"], ["t2"], ["t3"], ["b1"], ["b2"]]}
        assert task_pools(labels, self.POOLS) == {"other_task": "side_pool"}

    def test_a_union_pool_when_nothing_else_holds_them(self):
        assert task_pools({"x": [["c1"]]}, self.POOLS) == {"x": "mbeir_union_test_cand_pool"}
        assert task_pools({"y": [["nowhere"]]}, self.POOLS) == {}

    def test_the_global_setting_uses_the_union_test_pool(self):
        assert union_pool(self.POOLS) == "mbeir_union_test_cand_pool"
        assert union_pool({"p": ["a"], "q": ["b"]}) is None


WORDS = "red blue green black white shoe hat lamp sofa desk chair rug wool oak steel".split()


def candidates(task: str, n: int) -> list[Candidate]:
    return [
        Candidate(
            f"{task}:{i}", Modality.TEXT, f"{WORDS[i % 15]} {WORDS[(i * 7) % 15]} item{i}", None
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """Two tasks, their pools and a union pool indexed for all five configs; evaluated."""
    root = tmp_path_factory.mktemp("eval")
    paths = ArtifactLayout(root / "artifacts")
    pools = {
        "mbeir_a_task0_cand_pool": candidates("0", 40),
        "mbeir_b_task1_cand_pool": candidates("1", 30),
    }
    pools["mbeir_union_test_cand_pool"] = [c for p in list(pools.values()) for c in p]
    # "enhancement" appends the item number again: the full configs see more of it
    enhanced = {c.did: f"{c.txt} {c.txt.split()[-1]}" for p in pools.values() for c in p}
    store = LanceDBResource(uri=str(paths.lancedb))
    encoder = WordEncoder()
    for config in INDEXED.values():
        rows = index_rows(
            config, pools, Provenance(f"{config.retriever.name}@x", "p", "m"), enhanced
        )
        update_index(store, config.table, rows, encoder, root, PLAN)
    queries = pd.DataFrame(
        [
            # the query names the item: a good retriever finds it at rank 1
            {"task": t, "qid": f"{t[-1]}q{i}", "query_type": "text" if i % 2 else "qa",
             "txt": f"item{i} please" if i % 3 else "something vague",
             "enhanced_txt": f"item{i} item{i}", "img_path": None,
             "positives": [f"{t[-1]}:{i}"] + ([f"{t[-1]}:{i + 1}"] if i % 4 == 0 else [])}
            for t, n in (("mbeir_a_task0", 12), ("mbeir_b_task1", 9))
            for i in range(n)
        ]
    )  # fmt: skip
    labels = {t: list(g["positives"]) for t, g in queries.groupby("task")}
    dids = {p: [c.did for c in cs] for p, cs in pools.items()}
    evaluation = evaluate_ablation(
        store, list(INDEXED.values()), {c: encoder for c in ("none", "corpus", "query", "full")},
        queries, labels, dids, paths, settings=("local", "global"), root=root, plan=PLAN,
        info={"corpus": "tiny"},
    )  # fmt: skip
    return evaluation, paths, queries


def test_every_config_task_query_type_and_setting_has_a_row(ablation):
    evaluation, _, queries = ablation
    keys = {(r["setting"], r["task"], r["query_type"], r["config"]) for r in evaluation.rows}
    expected = {
        (s, t, q, c)
        for s in ("local", "global")
        for t in ("mbeir_a_task0", "mbeir_b_task1")
        for q in ("text", "qa", "all")
        for c in INDEXED
    }
    assert keys == expected
    aligned = {r["config"]: r["aligned"] for r in evaluation.rows}
    assert aligned == {
        "none": True,
        "corpus": True,
        "query": True,
        "full": True,
        "inference-only": False,
    }
    n = {(r["task"], r["query_type"]): r["n_queries"] for r in evaluation.rows}
    assert n[("mbeir_a_task0", "all")] == 12 and n[("mbeir_b_task1", "qa")] == 5


def test_local_search_stays_in_the_tasks_pool(ablation):
    evaluation, paths, _ = ablation
    assert evaluation.pools["local"] == {
        "mbeir_a_task0": "mbeir_a_task0_cand_pool",
        "mbeir_b_task1": "mbeir_b_task1_cand_pool",
    }
    for line in paths.run_file("none", "mbeir_b_task1").read_text().splitlines():
        assert line.split()[2].startswith("1:")


def test_the_report_matches_an_independent_computation_from_the_run_files(ablation):
    """Recompute Recall@K and trec recall@K by hand from each run file and qrels file."""
    evaluation, paths, queries = ablation
    types = dict(zip(queries["qid"], queries["query_type"], strict=True))
    for row in evaluation.rows:
        qids = {q for q, t in types.items() if row["query_type"] in ("all", t)}
        for k in (1, 5, 10):
            recall, share = recall_from_files(
                row["run_file"], paths.trec_qrels(row["task"]), qids, k
            )
            assert row[f"recall_at_{k}"] == pytest.approx(recall), (row, k)
            assert row[f"trec_recall_at_{k}"] == pytest.approx(share), (row, k)


def test_run_files_have_strictly_decreasing_scores(ablation):
    _, paths, _ = ablation
    for path in (paths.evaluation_dir / "runs").rglob("*.trec"):
        by_query: dict[str, list[float]] = {}
        for line in path.read_text().splitlines():
            qid, q0, _, rank, score, _ = line.split()
            assert q0 == "Q0"
            by_query.setdefault(qid, []).append(float(score))
            assert int(rank) == len(by_query[qid])
        for scores in by_query.values():
            assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), path


def test_enhanced_queries_help_here_and_the_p_value_says_so(ablation):
    evaluation, _, _ = ablation
    rows = {(r["setting"], r["task"], r["query_type"], r["config"]): r for r in evaluation.rows}
    full = rows[("local", "mbeir_a_task0", "all", "full")]
    none = rows[("local", "mbeir_a_task0", "all", "none")]
    assert full["recall_at_1"] > none["recall_at_1"]
    assert none["p_value_against"] == "full" and 0 < none["p_value"] <= 1
    assert full["p_value"] is None
    inference = rows[("local", "mbeir_a_task0", "all", "inference-only")]
    assert inference["p_value_against"] == "full" and 0 < inference["p_value"] <= 1


def test_outputs_are_written_and_readable(ablation):
    evaluation, paths, _ = ablation
    report = read_report(paths.evaluation_report)
    assert report["info"]["corpus"] == "tiny" and len(report["rows"]) == len(evaluation.rows)
    assert paths.evaluation_chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_parquet(paths.evaluation_per_query)) == 21 * 5 * 2
    assert "**" in markdown(evaluation.rows) and "**" not in text_table(evaluation.rows)


def test_a_missing_report_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize retrieval_eval"):
        read_report(tmp_path / "report.json")
