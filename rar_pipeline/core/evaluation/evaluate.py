"""The ablation on a corpus' test split: rank every test query with every config, score it.

Each task's test queries are ranked against the task's own pool (UniIR's local setting),
or against the union pool (global setting), by the config's retriever over the config's
index table. Test labels are read only here, to score and to know which pool a task's
queries belong to; no test label reaches enhancement or training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from rar_pipeline.core.corpus.tables import write_parquet
from rar_pipeline.core.evaluation.metrics import per_query
from rar_pipeline.core.evaluation.report import chart, summarize, write_report
from rar_pipeline.core.evaluation.trec import (
    Ranking,
    strictly_decreasing,
    write_qrels,
    write_run,
)
from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.configs import IndexedConfig
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.retrieval.data import encode_item, home_pools
from rar_pipeline.core.retrieval.encoders.base import Encoder
from rar_pipeline.core.retrieval.pairs import query_text
from rar_pipeline.core.search.store import SearchStore, TableSearch, dense_search, hits_by_query

Setting = Literal["local", "global"]
RUN_DEPTH = 100  # candidates kept per query in a run file
# columns of the test-query table evaluation reads (queries joined with enhanced_queries)
TEST_QUERY_COLUMNS = ["task", "qid", "query_type", "txt", "enhanced_txt", "img_path", "positives"]


def load_test_queries(paths: ArtifactLayout, tasks: Sequence[str]) -> pd.DataFrame:
    """The test queries of `tasks` with their query type and enhanced text.

    Returns:
        `TEST_QUERY_COLUMNS` rows (`positives`: the labelled candidates, for scoring only).
    """
    frames = []
    for task in tasks:
        qs = pd.read_parquet(paths.queries(task))
        enhanced = pd.read_parquet(paths.enhanced_queries(task))
        qs = qs[qs["split"] == "test"].merge(
            enhanced[["split", "qid", "query_type", "enhanced_txt"]], on=["split", "qid"]
        )
        frames.append(qs.assign(task=task, positives=qs["pos_cand_list"].map(list)))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame.reindex(columns=TEST_QUERY_COLUMNS)


def task_pools(
    labels: Mapping[str, Sequence[Sequence[str]]], pools: Mapping[str, list[str]]
) -> dict[str, str]:
    """Each task's own pool (UniIR's local setting).

    M-BEIR names it after the task (`mbeir_cirr_task7` -> `mbeir_cirr_task7_cand_pool`).
    Where no pool has that name, it is where most of the task's positives live (their home
    pool), preferring pools that are not union pools.

    Args:
        labels: task -> each of its queries' positives (any split).
        pools: pool -> its dids.

    Returns:
        task -> pool (tasks whose positives are in no pool are left out).
    """
    home = home_pools(dict(pools))
    out = {}
    for task, positives in labels.items():
        if f"{task}_cand_pool" in pools:
            out[task] = f"{task}_cand_pool"
            continue
        votes = Counter(home[d] for pos in positives for d in pos[:1] if d in home)
        local = Counter({p: n for p, n in votes.items() if "union" not in p})
        if votes := local or votes:
            out[task] = min(votes, key=lambda p: (-votes[p], p))
    return out


def union_pool(pools: Mapping[str, Sequence[str]]) -> str | None:
    """The pool of the global setting: M-BEIR's union test pool, else the largest union pool.

    None when the corpus has no union pool: global search then spans every pool.
    """
    union = [p for p in pools if "union" in p]
    tests = [p for p in union if "test" in p]
    choice = tests or union
    return max(choice, key=lambda p: (len(pools[p]), p)) if choice else None


@dataclass
class ConfigRun:
    """One config's rankings: task -> qid -> ranking."""

    config: IndexedConfig
    rankings: dict[str, dict[str, Ranking]]
    unembedded: int = 0  # queries with nothing embeddable (they rank nothing, score 0)


def rank_config(
    store: SearchStore,
    config: IndexedConfig,
    encoder: Encoder,
    queries: pd.DataFrame,
    pool_of: Mapping[str, str | None],
    root: Path,
    plan: AnnPlan,
    *,
    depth: int = RUN_DEPTH,
    progress: Callable[[int], None] | None = None,
) -> ConfigRun:
    """Rank every test query (`TEST_QUERY_COLUMNS`) with one config.

    Args:
        store: the vector store holding the config's table.
        config: which retriever and representations.
        encoder: the config's retriever.
        queries: the test queries.
        pool_of: task -> the pool its queries are ranked in (None: every pool).
        root: the data root image paths are relative to.
        plan: the table's ANN query parameters.
        depth: candidates kept per query.
        progress: called with the number of queries embedded after each batch.
    """
    rep = config.representation
    rankings: dict[str, dict[str, Ranking]] = {}
    unembedded = 0
    for task, group in queries.groupby("task", sort=True):
        items = [
            encode_item(query_text(rep, txt, enhanced), img, root)
            for txt, enhanced, img in zip(
                group["txt"], group["enhanced_txt"], group["img_path"], strict=True
            )
        ]
        # a query with nothing embeddable ranks nothing (it scores 0)
        search = TableSearch(pool_of.get(str(task)), plan)
        dense = dense_search(store, config, encoder, items, depth, search, progress=progress)
        unembedded += len(dense.embedded.failed)
        hits = dense.hits
        by_query = hits_by_query(hits)
        rankings[str(task)] = {}
        for i, qid in enumerate(group["qid"]):
            found = by_query.get(i, hits.iloc[0:0])
            # the scores the run file holds: what trec_eval orders by
            scores = strictly_decreasing(found["score"].tolist())
            rankings[str(task)][str(qid)] = list(zip(found["did"], scores, strict=True))
    return ConfigRun(config, rankings, unembedded)


def qrels_by_task(queries: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """The test queries' labels: task -> {qid: {positive did: 1}}."""
    return {
        str(task): {
            str(qid): {str(d): 1 for d in positives}
            for qid, positives in zip(group["qid"], group["positives"], strict=True)
        }
        for task, group in queries.groupby("task", sort=True)
    }


def score_runs(runs: Sequence[ConfigRun], queries: pd.DataFrame) -> pd.DataFrame:
    """Per-query figures of every config: task, qid, query_type, config, aligned, measures."""
    qrels = qrels_by_task(queries)
    keys = zip(queries["task"], queries["qid"], strict=True)
    types = dict(zip(keys, queries["query_type"], strict=True))
    frames = []
    for run in runs:
        for task, rankings in run.rankings.items():
            scores = {q: dict(r) for q, r in rankings.items()}
            frame = per_query(qrels[task], scores).reset_index()
            frame.insert(0, "task", task)
            frame.insert(2, "query_type", [types[(task, q)] for q in frame["qid"]])
            frame.insert(3, "config", run.config.name)
            frame.insert(4, "aligned", run.config.aligned)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@dataclass
class Evaluation:
    """An ablation's results: report rows, per-query figures, where each task was ranked."""

    rows: list[dict[str, Any]]
    per_query: pd.DataFrame
    pools: dict[str, dict[str, str | None]]  # setting -> task -> pool
    unembedded: dict[str, int] = field(default_factory=dict)  # config -> queries (all settings)


def evaluate_ablation(
    store: SearchStore,
    configs: Sequence[IndexedConfig],
    encoders: Mapping[str, Encoder],
    queries: pd.DataFrame,
    labels: Mapping[str, Sequence[Sequence[str]]],
    pools: Mapping[str, list[str]],
    paths: ArtifactLayout,
    *,
    settings: Sequence[Setting] = ("local",),
    root: Path,
    plan: AnnPlan,
    info: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Rank the test queries with every config, score them, write every output file.

    Args:
        store: the vector store holding each config's table.
        configs: the configs to evaluate.
        encoders: retriever config name -> its encoder.
        queries: the test queries (`TEST_QUERY_COLUMNS`).
        labels: task -> its queries' positives (any split): which pool is the task's.
        pools: pool -> its dids.
        paths: where run files, qrels, per-query figures, the report and chart go.
        settings: "local" (each task's own pool) and/or "global" (the union pool).
        root: the data root image paths are relative to.
        plan: the tables' ANN query parameters.
        info: what the report records about the run (versions, corpus).
        progress: called with the number of queries embedded after each batch.
    """
    qrels = qrels_by_task(queries)
    for task, task_qrels in qrels.items():
        write_qrels(paths.trec_qrels(task), task_qrels)
    local = task_pools(labels, pools)
    pool_by_setting = {
        "local": {str(t): local.get(str(t)) for t in qrels},
        "global": {str(t): union_pool(pools) for t in qrels},
    }
    rows: list[dict[str, Any]] = []
    frames = []
    unembedded: dict[str, int] = {}
    for setting in settings:
        pool_of = pool_by_setting[setting]
        runs = []
        for config in configs:
            run = rank_config(store, config, encoders[config.retriever.name], queries, pool_of,
                              root, plan, progress=progress)  # fmt: skip
            for task, rankings in run.rankings.items():
                write_run(paths.run_file(config.name, task, setting), rankings,
                          f"rar-{config.name}-{setting}")  # fmt: skip
            runs.append(run)
            unembedded[config.name] = unembedded.get(config.name, 0) + run.unembedded
        scored = score_runs(runs, queries)
        frames.append(scored.assign(setting=setting))
        rows += summarize(scored, setting, lambda c, t, s=setting: str(paths.run_file(c, t, s)))
    per_query_frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    write_parquet(per_query_frame, paths.evaluation_per_query)
    pools_used = {s: pool_by_setting[s] for s in settings}
    write_report(paths.evaluation_report, rows, {**(info or {}), "pools": pools_used})
    if rows:
        chart([r for r in rows if r["setting"] == settings[0]], paths.evaluation_chart)
    return Evaluation(rows, per_query_frame, pools_used, unembedded)
