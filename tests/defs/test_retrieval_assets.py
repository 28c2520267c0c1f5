"""Training pairs and checkpoints per config, tracked in MLflow, with a lineage that follows
the ablation in both directions."""

from __future__ import annotations

import dataclasses
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
from rar_pipeline.core.retrieval.pairs import PAIR_COLUMNS
from rar_pipeline.core.settings import load_settings
from rar_pipeline.definitions import build_assets
from rar_pipeline.defs.launch import run_pipeline
from rar_pipeline.defs.resources import (
    CorpusResource,
    FakeVLMResource,
    MlflowResource,
    RetrieverResource,
)

CONFIGS = ("none", "corpus", "query", "full")


@pytest.fixture(scope="module")
def built(small_demo: Path, tmp_path_factory: pytest.TempPathFactory):
    """The graph run once on the small demo with a fake VLM; tests only read it."""
    tmp_path = tmp_path_factory.mktemp("retrieval")
    corpus = CorpusResource(data_root=str(small_demo), artifacts_dir=str(tmp_path / "out"))
    vlm = FakeVLMResource()
    retriever = RetrieverResource(dim=32, epochs=3, batch_size=16, patience=2)
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlartifacts"),
    )
    with dg.instance_for_test() as instance:
        assets = [a for a in build_assets(vlm, retriever) if a.group_names_by_key and "demo"
                  not in set(a.group_names_by_key.values())]  # fmt: skip
        run_pipeline(
            load_settings(data_root=small_demo, artifacts_dir=tmp_path / "out"),
            resources={"corpus": corpus, "vlm": vlm, "retriever": retriever, "mlflow": mlflow},
            assets=assets,
            instance=instance,
        )
        yield corpus, vlm, instance, retriever, mlflow


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
    faster = retriever.model_copy(update={"lr": 0.01})
    resolver = get_stale_status_resolver(instance, build_assets(vlm, faster))
    for c in CONFIGS:
        assert resolver.get_status(dg.AssetKey(f"retriever_checkpoint_{c}")) == StaleStatus.STALE
        assert resolver.get_status(dg.AssetKey(f"training_pairs_{c}")) == StaleStatus.FRESH
    # how often the trainer saves its state changes nothing it produces
    chatty = retriever.model_copy(update={"checkpoint_every": 1})
    assert chatty.code_version() == retriever.code_version()


def test_every_config_has_a_reloadable_checkpoint_naming_what_it_saw(built):
    corpus, vlm, _, retriever, _ = built
    items = [EncodeItem("a red circle"), EncodeItem("who makes this?")]
    for c in CONFIGS:
        path = corpus.artifacts().checkpoint(c)
        manifest = read_checkpoint(path)
        assert manifest["config"] == c and manifest["encoder"]["encoder"] == "offline"
        assert manifest["params"]["lr"] == retriever.lr and manifest["best_epoch"] >= 0
        assert manifest["data_versions"]["vlm_backend"] == vlm.backend
        assert {p.suffix for p in path.rglob("*") if p.is_file()} == {".json", ".safetensors"}
        vectors = load_encoder(path).embed(items)
        assert vectors.shape == (2, 32)
    assert not corpus.artifacts().training_state("none").exists()


def test_each_training_is_an_mlflow_run_with_a_registered_model_version(built):
    from mlflow.tracking import MlflowClient

    corpus, _, _, retriever, mlflow = built
    client = MlflowClient(tracking_uri=mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(mlflow.experiment).experiment_id])
    by_config = {r.data.tags["config"]: r for r in runs}
    assert set(by_config) == set(CONFIGS)
    for c, run in by_config.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["corpus"] == corpus.name and run.data.tags["dagster_run_id"]
        assert run.data.params["lr"] == str(retriever.lr)
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert len(losses) == read_checkpoint(corpus.artifacts().checkpoint(c))["steps"]
        recalls = client.get_metric_history(run.info.run_id, "val_recall_at_1")
        assert 1 <= len(recalls) <= retriever.epochs
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert {"checkpoint/checkpoint.json", "checkpoint/encoder"} <= logged
        versions = client.search_model_versions(f"name='rar-{corpus.name}-{c}'")
        assert [v.run_id for v in versions] == [run.info.run_id]


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
    from mlflow.tracking import MlflowClient

    path = corpus.artifacts().checkpoint("none")
    before = read_checkpoint(path)
    result = dg.materialize(
        build_assets(vlm, retriever),
        selection=["retriever_checkpoint_none"],
        resources={"corpus": corpus, "vlm": vlm, "retriever": retriever, "mlflow": mlflow},
        instance=instance,
    )
    (event,) = result.asset_materializations_for_node("retriever_checkpoint_none")
    assert event.metadata["registered_model"].value == f"rar-{corpus.name}-none (kept)"
    assert read_checkpoint(path) == before  # not retrained, not rewritten
    client = MlflowClient(tracking_uri=mlflow.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(mlflow.experiment).experiment_id], "tags.config = 'none'"
    )
    assert len(runs) == 1  # no new run, no new model version
