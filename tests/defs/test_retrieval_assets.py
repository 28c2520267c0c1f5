"""Training pairs, checkpoints, LanceDB indexes and the evaluation per config, tracked in
MLflow, with a lineage that follows the ablation in both directions."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from rar_pipeline.core.enhance import prompts
from rar_pipeline.core.retrieval.checkpoint import read_checkpoint
from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.retrieval.encoders.factory import load_encoder
from rar_pipeline.core.retrieval.pairs import PAIR_COLUMNS, read_left_out
from rar_pipeline.core.settings import load_settings
from rar_pipeline.definitions import build_assets
from rar_pipeline.defs.launch import run_pipeline
from rar_pipeline.defs.resources import (
    CorpusResource,
    LanceDBResource,
    MlflowResource,
    RetrieverResource,
)
from tests.fake_vlm import FakeVLMResource
from tests.graph_resources import graph_assets, graph_resources

CONFIGS = ("none", "corpus", "query", "full")


@pytest.fixture(scope="module")
def built(small_demo: Path, tmp_path_factory: pytest.TempPathFactory):
    """The graph run once on the small demo with a fake VLM; tests only read it."""
    tmp_path = tmp_path_factory.mktemp("retrieval")
    corpus = CorpusResource(data_root=str(small_demo), artifacts_dir=str(tmp_path / "out"))
    vlm = FakeVLMResource()
    retriever = RetrieverResource(dim=32, training={"epochs": 3, "batch_size": 16, "patience": 2})
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlartifacts"),
    )
    with dg.instance_for_test() as instance:
        assets = [a for a in build_assets(vlm, retriever) if a.group_names_by_key and "demo"
                  not in set(a.group_names_by_key.values())]  # fmt: skip
        run_pipeline(
            load_settings(data_root=small_demo, artifacts_dir=tmp_path / "out"),
            resources=_resources(corpus, vlm, retriever, mlflow),
            assets=assets,
            instance=instance,
        )
        yield corpus, vlm, instance, retriever, mlflow


def _resources(corpus, vlm, retriever, mlflow) -> dict:
    lancedb = LanceDBResource(uri=str(corpus.artifacts().lancedb))
    return {"corpus": corpus, "vlm": vlm, "retriever": retriever, "mlflow": mlflow,
            "lancedb": lancedb}  # fmt: skip


def _training_runs(mlflow, where: str = "") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(mlflow.experiment).experiment_id
    query = "attributes.run_name LIKE 'train-%'" + (f" AND {where}" if where else "")
    return client.search_runs([experiment], query)


def _status(instance, vlm, retriever, asset: str) -> StaleStatus:
    resolver = get_stale_status_resolver(instance, build_assets(vlm, retriever))
    return resolver.get_status(dg.AssetKey(asset))


def _statuses(built) -> dict[str, StaleStatus]:
    _, vlm, instance, retriever, _ = built
    return {
        f"{kind}_{c}": _status(instance, vlm, retriever, f"{kind}_{c}")
        for kind in ("training_pairs", "retriever_checkpoint")
        for c in CONFIGS
    }


def test_every_config_has_pairs_from_the_train_split(built):
    corpus = built[0]
    frames = {c: pd.read_parquet(corpus.artifacts().training_pairs(c)) for c in CONFIGS}
    for frame in frames.values():
        assert list(frame.columns) == PAIR_COLUMNS and len(frame) > 0
        assert set(frame["split"]) == {"train", "val"}
    test_qids = set(pd.read_parquet(corpus.artifacts().queries("mbeir_shapeshop_task6"))
                    .query("split == 'test'")["qid"])  # fmt: skip
    assert not test_qids & set(frames["full"]["qid"])
    # the same pairs in every config, only the texts differ
    keys = {c: sorted(zip(f.qid, f.did, strict=True)) for c, f in frames.items()}
    assert keys["none"] == keys["corpus"] == keys["query"] == keys["full"]
    listing = frames["full"][frames["full"].cand_txt.str.contains("Visual Context", na=False)]
    assert (
        len(listing) and not frames["none"].cand_txt.str.contains("Visual Context", na=False).any()
    )


def test_each_pairs_asset_says_what_it_left_out_and_its_audit_passed(built):
    corpus, _, instance, _, _ = built
    for c in CONFIGS:
        key = dg.AssetKey(f"training_pairs_{c}")
        metadata = instance.get_latest_materialization_event(key).asset_materialization.metadata
        assert metadata["pairs_left_out"].value == 0  # the small demo repeats no test query
        assert metadata["negatives_revealing_a_test_label"].value == 0
        report = corpus.artifacts().training_pairs_left_out(c)
        assert metadata["left_out_report"].value == str(report) and report.read_text() == ""
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, "no_test_leakage")]
        )[dg.AssetCheckKey(key, "no_test_leakage")]
        assert check.evaluation.passed
        frame = pd.read_parquet(corpus.artifacts().training_pairs(c))
        assert all(k.split("/")[0] == "train" for k in frame["query_key"])  # held-out ones too


@pytest.mark.slow
def test_a_train_split_copying_the_test_split_leaves_every_pair_out_and_trains_nothing(
    mini_corpus: Path, tmp_path: Path
):
    shutil.copyfile(mini_corpus / "query/test/mbeir_mini_task0_test.jsonl",
                    mini_corpus / "query/train/mbeir_mini_task0_train.jsonl")  # fmt: skip
    out = tmp_path / "out"
    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(out))
    earlier = corpus.artifacts().checkpoint("none")  # what an earlier run trained, on other data
    earlier.mkdir(parents=True)
    (earlier / "checkpoint.json").write_text("{}")
    with dg.instance_for_test() as instance:
        result = run_pipeline(
            load_settings(data_root=mini_corpus, artifacts_dir=out),
            resources=graph_resources(corpus),
            assets=graph_assets(),
            instance=instance,
            through="retrieval",
        )
    assert not result.blocked
    steps = {s.asset: s for s in result.steps}
    for c in CONFIGS:
        pairs = steps[f"training_pairs_{c}"]
        assert pairs.checks_passed and pairs.metadata["dagster/row_count"] == 0
        assert pairs.metadata["pairs_left_out"] >= 2
        assert "test query 77:2000" in pairs.metadata["left_out"]
        assert "reveal a test label" in pairs.metadata["nothing_to_train"]
        listed = read_left_out(corpus.artifacts().training_pairs_left_out(c))
        assert {("train/77:2000", "77:1"), ("train/77:2001", "77:2")} <= set(
            zip(listed.query_key, listed.did, strict=True)
        )
        skipped = steps[f"retriever_checkpoint_{c}"].metadata["skipped"]
        assert skipped.startswith("no train pairs: ") and "reveal a test label" in skipped
    # the config has nothing trained now: the earlier checkpoint is not served for this data
    assert steps["retriever_checkpoint_none"].metadata["removed"] == str(earlier)
    assert not earlier.exists()


def test_before_any_edit_every_config_is_fresh(built):
    assert set(_statuses(built).values()) == {StaleStatus.FRESH}


@pytest.mark.parametrize(
    ("prompt", "stale"),
    [
        ("corpus_caption", {"corpus", "full"}),  # a caption edit: the corpus side
        ("qa_rewrite", {"query", "full"}),  # a query prompt edit: the mirror image
    ],
)
def test_a_prompt_edit_stales_exactly_the_configs_that_read_it(built, monkeypatch, prompt, stale):
    spec = prompts.PROMPTS[prompt]
    monkeypatch.setitem(prompts.PROMPTS, prompt, dataclasses.replace(spec, system="Edited."))
    assert _statuses(built) == {
        f"{kind}_{c}": StaleStatus.STALE if c in stale else StaleStatus.FRESH
        for kind in ("training_pairs", "retriever_checkpoint")
        for c in CONFIGS
    }


def test_a_new_training_setting_stales_every_checkpoint_and_no_pairs(built):
    corpus, vlm, instance, retriever, _ = built
    faster = retriever.model_copy(update={"training": retriever.training.model_copy(
        update={"lr": 0.01})})  # fmt: skip
    resolver = get_stale_status_resolver(instance, build_assets(vlm, faster))
    for c in CONFIGS:
        assert resolver.get_status(dg.AssetKey(f"retriever_checkpoint_{c}")) == StaleStatus.STALE
        assert resolver.get_status(dg.AssetKey(f"training_pairs_{c}")) == StaleStatus.FRESH
    # how often the trainer saves its state changes nothing it produces
    chatty = retriever.model_copy(update={"training": retriever.training.model_copy(
        update={"checkpoint_every": 1})})  # fmt: skip
    assert chatty.code_version() == retriever.code_version()


def test_every_config_has_a_reloadable_checkpoint_naming_what_it_saw(built):
    corpus, vlm, _, retriever, _ = built
    items = [EncodeItem("a red circle"), EncodeItem("who makes this?")]
    for c in CONFIGS:
        path = corpus.artifacts().checkpoint(c)
        manifest = read_checkpoint(path)
        assert manifest["config"] == c and manifest["encoder"]["encoder"] == "offline"
        assert manifest["params"]["lr"] == retriever.training.lr and manifest["best_epoch"] >= 0
        assert manifest["data_versions"]["vlm_backend"] == vlm.backend
        assert {p.suffix for p in path.rglob("*") if p.is_file()} == {".json", ".safetensors"}
        vectors = load_encoder(path).embed(items)
        assert vectors.shape == (2, 32)
    assert not corpus.artifacts().training_state("none").exists()


def test_each_training_is_an_mlflow_run_with_a_registered_model_version(built):
    from mlflow.tracking import MlflowClient

    corpus, _, _, retriever, mlflow = built
    client = MlflowClient(tracking_uri=mlflow.tracking_uri)
    by_config = {r.data.tags["config"]: r for r in _training_runs(mlflow)}
    assert set(by_config) == set(CONFIGS)
    for c, run in by_config.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["corpus"] == corpus.name and run.data.tags["dagster_run_id"]
        assert run.data.params["lr"] == str(retriever.training.lr)
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert len(losses) == read_checkpoint(corpus.artifacts().checkpoint(c))["steps"]
        recalls = client.get_metric_history(run.info.run_id, "val_recall_at_1")
        assert 1 <= len(recalls) <= retriever.training.epochs
        # MLflow 3: the pairs are the run's dataset, the checkpoint a logged model it outputs
        (pairs,) = run.inputs.dataset_inputs
        assert pairs.dataset.name == f"training_pairs_{c}"
        assert {t.key: t.value for t in pairs.tags} == {"mlflow.data.context": "training"}
        (output,) = run.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert str(model.status) == "READY" and model.source_run_id == run.info.run_id
        manifest = read_checkpoint(corpus.artifacts().checkpoint(c))
        assert manifest["mlflow_model_id"] == model.model_id  # what evaluation links
        logged = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        assert {"checkpoint.json", "encoder"} <= logged
        versions = client.search_model_versions(f"name='rar-{corpus.name}-{c}'")
        assert [v.run_id for v in versions] == [run.info.run_id]
        assert [v.source for v in versions] == [model.artifact_location]


def test_the_graph_shows_the_ablation(built):
    _, vlm, _, retriever, _ = built
    parents = {
        spec.key.to_user_string(): {d.asset_key.to_user_string() for d in spec.deps}
        for asset in build_assets(vlm, retriever)
        for spec in asset.specs
    }
    assert parents["training_pairs_none"] == {"candidate_pool", "queries"}
    assert parents["training_pairs_corpus"] == {"candidate_pool", "queries", "enhanced_corpus"}
    assert parents["training_pairs_query"] == {"candidate_pool", "queries", "enhanced_queries"}
    assert parents["training_pairs_full"] == {
        "candidate_pool",
        "queries",
        "enhanced_corpus",
        "enhanced_queries",
    }
    for c in CONFIGS:  # a checkpoint reads its own config's pairs only
        assert parents[f"retriever_checkpoint_{c}"] == {f"training_pairs_{c}"}


def test_a_checkpoint_trained_on_the_same_data_with_the_same_options_is_kept(built):
    corpus, vlm, instance, retriever, mlflow = built
    path = corpus.artifacts().checkpoint("none")
    before = read_checkpoint(path)
    result = dg.materialize(
        build_assets(vlm, retriever),
        selection=["retriever_checkpoint_none"],
        resources=_resources(corpus, vlm, retriever, mlflow),
        instance=instance,
    )
    (event,) = result.asset_materializations_for_node("retriever_checkpoint_none")
    assert event.metadata["registered_model"].value == f"rar-{corpus.name}-none (kept)"
    assert read_checkpoint(path) == before  # not retrained, not rewritten
    assert len(_training_runs(mlflow, "tags.config = 'none'")) == 1  # no new run or version
    # an identical checkpoint keeps its data version: its indexes stay fresh
    assert _status(instance, vlm, retriever, "lancedb_index_none") == StaleStatus.FRESH
    assert _status(instance, vlm, retriever, "lancedb_index_inference_only") == StaleStatus.FRESH


# -- indexes and evaluation

INDEXES = {c: f"lancedb_index_{c.replace('-', '_')}" for c in (*CONFIGS, "inference-only")}


@pytest.mark.parametrize(
    ("prompt", "stale"),
    [
        # a caption edit: every index embedding the enhanced corpus
        ("corpus_caption", {"corpus", "full", "inference-only"}),
        # a query prompt edit: the retrievers trained on enhanced queries (their checkpoints go)
        ("qa_rewrite", {"query", "full"}),
    ],
)
def test_a_prompt_edit_stales_exactly_the_indexes_it_changes(built, monkeypatch, prompt, stale):
    _, vlm, instance, retriever, _ = built
    spec = prompts.PROMPTS[prompt]
    monkeypatch.setitem(prompts.PROMPTS, prompt, dataclasses.replace(spec, system="Edited."))
    resolver = get_stale_status_resolver(instance, build_assets(vlm, retriever))
    statuses = {c: resolver.get_status(dg.AssetKey(a)) for c, a in INDEXES.items()}
    assert statuses == {c: StaleStatus.STALE if c in stale else StaleStatus.FRESH for c in INDEXES}
    assert resolver.get_status(dg.AssetKey("retrieval_eval")) == StaleStatus.STALE


def test_before_any_edit_the_indexes_and_evaluation_are_fresh(built):
    _, vlm, instance, retriever, _ = built
    for asset in [*INDEXES.values(), "retrieval_eval"]:
        assert _status(instance, vlm, retriever, asset) == StaleStatus.FRESH, asset


def test_each_index_holds_every_candidate_with_what_made_it(built):
    import lancedb

    corpus, vlm, instance, _, _ = built
    db = lancedb.connect(corpus.artifacts().lancedb)
    pools = {s: pd.read_parquet(corpus.artifacts().pool(s)) for s in corpus.layout().pools}
    held: dict[str, list[str]] = {}  # one row per candidate, listing the pools holding it
    for shard, frame in pools.items():
        for did in frame["did"]:
            held.setdefault(did, []).append(shard)
    expected = sorted((d, tuple(p)) for d, p in held.items())
    for config, asset in INDEXES.items():
        table = db.open_table(config)
        rows = table.search().limit(None).to_pandas()
        assert sorted(zip(rows["did"], map(tuple, rows["pools"]), strict=True)) == expected
        # small: exact search, a full-text index, and the pool and modality filters' indexes
        assert {i.index_type for i in table.list_indices()} == {"FTS", "LabelList", "Bitmap"}
        reads_captions = config in ("corpus", "full", "inference-only")
        assert rows["enhanced_txt"].notna().any() == reads_captions
        assert rows["vlm_model"].notna().all() == reads_captions
        retriever = "none" if config == "inference-only" else config
        assert rows["retriever"].str.startswith(f"{retriever}@").all()
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        metadata = event.asset_materialization.metadata
        assert metadata["table_version"].value == table.version
        assert metadata["dagster/row_count"].value == len(expected)


def test_the_report_has_five_configs_per_task_and_matches_its_run_files(built):
    from tests.run_files import recall_from_files

    corpus = built[0]
    paths = corpus.artifacts()
    report = json.loads(paths.evaluation_report.read_text())
    rows = report["rows"]
    tasks = set(corpus.layout().queries)
    per_task = {}
    for r in rows:
        per_task.setdefault((r["task"], r["query_type"]), set()).add(r["config"])
    assert {t for t, _ in per_task} == tasks
    assert all(c == set(INDEXES) for c in per_task.values())
    per_query = pd.read_parquet(paths.evaluation_per_query)
    for r in rows:
        assert r["aligned"] == (r["config"] != "inference-only")
        assert (r["p_value"] is not None) == (r["config"] in ("none", "inference-only"))
        chosen = per_query[(per_query.task == r["task"]) & (per_query.config == r["config"])]
        if r["query_type"] != "all":
            chosen = chosen[chosen.query_type == r["query_type"]]
        assert r["n_queries"] == len(chosen) > 0
        for k in (1, 5, 10):
            recall, share = recall_from_files(
                r["run_file"], paths.trec_qrels(r["task"]), set(chosen["qid"]), k
            )
            assert r[f"recall_at_{k}"] == pytest.approx(recall)
            assert r[f"trec_recall_at_{k}"] == pytest.approx(share)


def test_the_evaluation_metadata_shows_the_table_and_the_chart(built):
    _, _, instance, _, _ = built
    event = instance.get_latest_materialization_event(dg.AssetKey("retrieval_eval"))
    metadata = event.asset_materialization.metadata
    table = metadata["ablation"].value
    assert table.startswith("| task | query type | n | none | corpus | query | full | inference")
    assert "**" in table
    assert metadata["chart"].value.startswith("![ablation](data:image/png;base64,")
    assert metadata["test_queries"].value > 0


def test_each_config_has_an_mlflow_evaluation_run_linked_to_its_training(built):
    from mlflow.tracking import MlflowClient

    corpus, vlm, _, retriever, mlflow = built
    client = MlflowClient(tracking_uri=mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(mlflow.experiment).experiment_id
    training = {r.data.tags["config"]: r.info.run_id for r in _training_runs(mlflow)}
    runs = client.search_runs([experiment], "attributes.run_name LIKE 'eval-%'")
    by_config = {r.data.tags["config"]: r for r in runs}
    assert set(by_config) == set(INDEXES)
    for config, run in by_config.items():
        retriever_config = "none" if config == "inference-only" else config
        assert run.data.tags["training_run_id"] == training[retriever_config]
        # the logged model of that training (search_runs leaves model inputs out)
        (evaluated,) = client.get_run(run.info.run_id).inputs.model_inputs
        model = client.get_logged_model(evaluated.model_id)
        assert model.source_run_id == training[retriever_config]
        assert run.data.params["vlm_backend"] == vlm.backend
        assert run.data.params["retriever_version"] == retriever.code_version()
        assert run.data.params["prompt.corpus_caption"] == prompts.PROMPTS["corpus_caption"].version
        task = sorted(corpus.layout().queries)[0]
        assert f"local/{task}/all/recall_at_5" in run.data.metrics or any(
            m.startswith(f"local/{task}/") for m in run.data.metrics
        )
        assert "local/macro/recall_at_5" in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"runs", "ablation.png", "report.json"} <= artifacts
        run_files = client.list_artifacts(run.info.run_id, "runs/local")
        assert len(run_files) == len(corpus.layout().queries)


def test_rar_report_prints_the_rows_as_json(built, capsys):
    from rar_pipeline.cli import main

    corpus = built[0]
    code = main(["report", "--data", corpus.data_root, "--artifacts", corpus.artifacts_dir,
                 "--format", "json"])  # fmt: skip
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {"task", "query_type", "config", "aligned", "recall_at_1", "recall_at_5",
            "recall_at_10", "n_queries", "p_value", "run_file"}  # fmt: skip
    assert rows and all(keys <= set(r) for r in rows)
    assert main(["report", "--data", corpus.data_root, "--artifacts", corpus.artifacts_dir]) == 0
    assert "inference-only" in capsys.readouterr().out


# -- the notebooks run headless on this output, so they never rot

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["evaluation.ipynb", "explore_corpus.ipynb"])
def test_the_notebook_runs_on_the_pipelines_output(built, monkeypatch, tmp_path, name):
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    corpus = built[0]
    monkeypatch.setenv("RAR_DATA_ROOT", corpus.data_root)
    monkeypatch.setenv("RAR_ARTIFACTS_DIR", corpus.artifacts_dir)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # no TCP port; the socket files' path is absolute (the kernel runs in notebooks/)
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    client = NotebookClient(notebook, km=kernel, timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})  # fmt: skip
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if name == "evaluation.ipynb":
        shown = "".join(str(o.get("data", {})) for o in outputs)
        assert "image/png" in shown  # the chart
        assert "inference-only" in shown and "p_value" in shown
        html = next(o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})
                    and "enhanced:" in o.data["text/html"])  # fmt: skip
        assert html.count("<tr>") == 1 + len(corpus.layout().queries)  # header + a query/task
        assert "data:image/jpeg;base64," in html  # thumbnails
