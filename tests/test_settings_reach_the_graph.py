"""Every setting reaches the graph through `rar run`: flag, then environment, then default.

`rar run` resolves the settings and hands resources to `run_pipeline`; these tests catch
what it hands over (the graph itself is exercised by the end-to-end CLI tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rar_pipeline.cli import main
from rar_pipeline.core.settings import SETTINGS
from rar_pipeline.defs import launch


@pytest.fixture
def captured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `rar run` passes to the graph; nothing is materialized."""
    monkeypatch.chdir(tmp_path)
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    seen: dict[str, Any] = {}

    def fake_run(settings, *, resources, assets, instance, **kwargs):
        seen.update(settings=settings, resources=resources, assets=assets)
        return launch.PipelineResult()

    monkeypatch.setattr(launch, "run_pipeline", fake_run)
    return seen


# setting -> (a value to give, where it lands in what `rar run` hands the graph)
WHERE = {
    "project_dir": ("proj", lambda s, r: Path(r["mlflow"].artifact_location).parent.parent.name),
    "data_root": (None, lambda s, r: r["corpus"].data_root),  # the required --data
    "artifacts_dir": ("out", lambda s, r: Path(r["corpus"].artifacts_dir).name),
    "image_check": ("exists", lambda s, r: r["corpus"].image_check),
    "strict_paths": ("on", lambda s, r: "on" if r["corpus"].strict_paths else "off"),
    "vlm_backend": ("openai", lambda s, r: r["vlm"].backend),
    "vlm_model": ("org/model", lambda s, r: r["vlm"].model_id),
    "vlm_base_url": ("http://127.0.0.1:9/v1", lambda s, r: r["vlm"].base_url),
    "vlm_api_key_env": ("MY_KEY", lambda s, r: r["vlm"].api_key_env),
    "vlm_timeout_s": ("7.5", lambda s, r: str(r["vlm"].timeout_s)),
    "vlm_device": ("cpu", lambda s, r: r["vlm"].device),
    "hallucination_policy": ("drop", lambda s, r: r["vlm"].hallucination_policy),
    "retriever_encoder": ("clip", lambda s, r: r["retriever"].encoder),
    "retriever_model": ("org/clip", lambda s, r: r["retriever"].model),
    "retriever_trained": ("lora", lambda s, r: r["retriever"].trained),
    "retriever_device": ("cuda", lambda s, r: r["retriever"].device),
    "train_epochs": ("7", lambda s, r: str(r["retriever"].epochs)),
    "train_max_steps": ("9", lambda s, r: str(r["retriever"].max_steps)),
    "train_batch_size": ("16", lambda s, r: str(r["retriever"].batch_size)),
    "train_lr": ("0.01", lambda s, r: str(r["retriever"].lr)),
    "mined_negatives": ("2", lambda s, r: str(r["retriever"].mined_negatives)),
    "mlflow_tracking_uri": ("sqlite:///x.db", lambda s, r: r["mlflow"].tracking_uri),
    "mlflow_artifacts": ("mla", lambda s, r: Path(r["mlflow"].artifact_location).name),
    "lancedb_uri": ("s3://bucket/db", lambda s, r: r["lancedb"].uri),
    "dagster_home": ("dh", lambda s, r: s.dagster_home.name),
    # the search page's own (tests/web/test_serve.py): no part of the graph
    "search_max_upload_mb": (None, None),
    "search_upload_quota_mb": (None, None),
    "search_allowed_hosts": (None, None),
}


def test_every_setting_is_covered_here():
    assert set(WHERE) == {s.name for s in SETTINGS}


@pytest.mark.parametrize(
    "setting", [s for s in SETTINGS if WHERE[s.name][0] is not None], ids=lambda s: s.env
)
def test_the_environment_variable_reaches_the_graph(setting, captured, mini_corpus, monkeypatch):
    value, where = WHERE[setting.name]
    monkeypatch.setenv(setting.env, value)
    assert main(["run", "--data", str(mini_corpus)]) == 0
    assert where(captured["settings"], captured["resources"]) == value


@pytest.mark.parametrize(
    "setting",
    [s for s in SETTINGS if s.flag and WHERE[s.name][0] is not None],
    ids=lambda s: s.flag,
)
def test_a_flag_beats_the_environment(setting, captured, mini_corpus, monkeypatch):
    value, where = WHERE[setting.name]
    other = {"exists": "header", "openai": "vllm", "drop": "strip", "7.5": "9.0", "on": "off"}
    monkeypatch.setenv(setting.env, other.get(value, value + "-from-env"))
    assert main(["run", "--data", str(mini_corpus), setting.flag, value]) == 0
    assert where(captured["settings"], captured["resources"]) == value


def test_the_data_root_flag_reaches_the_graph(captured, mini_corpus):
    assert main(["run", "--data", str(mini_corpus)]) == 0
    assert captured["resources"]["corpus"].data_root == str(mini_corpus.resolve())


def test_defaults_apply_when_nothing_is_given(captured, mini_corpus, tmp_path):
    assert main(["run", "--data", str(mini_corpus)]) == 0
    resources = captured["resources"]
    assert resources["corpus"].image_check == "decode"
    assert resources["corpus"].artifacts_dir == str(tmp_path / "artifacts" / "mbeir_mini")
    assert (resources["vlm"].backend, resources["vlm"].timeout_s) == ("offline", 120.0)
    assert resources["lancedb"].uri == str(tmp_path / "artifacts" / "mbeir_mini" / "lancedb")


def test_a_bad_value_is_refused_naming_its_source(captured, mini_corpus, monkeypatch, capsys):
    monkeypatch.setenv("RAR_IMAGE_CHECK", "sometimes")
    assert main(["run", "--data", str(mini_corpus)]) == 2
    assert "RAR_IMAGE_CHECK" in capsys.readouterr().err


def test_the_chosen_vlm_shapes_the_graph(captured, mini_corpus, monkeypatch):
    monkeypatch.setenv("RAR_VLM_BACKEND", "openai")
    assert main(["run", "--data", str(mini_corpus)]) == 0
    names = {k.to_user_string() for a in captured["assets"] for k in a.keys}
    assert "offline_captioner" not in names and "corpus_captions" in names
