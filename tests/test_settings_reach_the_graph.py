"""Every setting reaches the graph through `rar run`: flag, then environment, then default.

`rar run` resolves the settings and hands resources to `run_pipeline`; these tests catch
what it hands over (the graph itself is exercised by the end-to-end CLI tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rar_pipeline.cli import main
from rar_pipeline.cli_args import LOCATIONS
from rar_pipeline.core.settings import KNOBS
from rar_pipeline.defs import launch


@pytest.fixture
def captured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `rar run` passes to the graph; nothing is materialized."""
    monkeypatch.chdir(tmp_path)
    for knob in KNOBS:
        monkeypatch.delenv(knob.env, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    for name in GIVEN["enhance.prompts"]:
        (tmp_path / name).write_text("# no prompt overridden\n")
    seen: dict[str, Any] = {}

    def fake_run(settings, *, resources, assets, instance, **kwargs):
        seen.update(settings=settings, resources=resources, assets=assets)
        return launch.PipelineResult()

    monkeypatch.setattr(launch, "run_pipeline", fake_run)
    return seen


# the section each resource inherits: a knob's value lands at the same path in it
RESOURCE_OF = {
    "corpus": ("corpus", ()),
    "vlm": ("vlm", ()),
    "enhance": ("vlm", ("enhance",)),
    "retriever": ("retriever", ()),
    "training": ("retriever", ("training",)),
}
# values for fields whose string a generic rule cannot make up
GIVEN = {
    "vlm.backend": ("openai", "vllm"),
    "retriever.encoder": ("clip", "vlm-embed"),
    "retriever.trained": ("lora", "full"),
    "vlm.openai.base_url": ("http://127.0.0.1:9/v1", "http://127.0.0.1:8/v1"),
    "enhance.query_type_overrides": ('{"t": "qa"}', "{}"),
    "enhance.prompts": ("a.toml", "b.toml"),  # prompts files, written by `captured`
}
# locations resolved against the project folder (here the working directory)
RESOLVED = {"enhance.prompts"}
GRAPH = [k for k in KNOBS if k.section in RESOURCE_OF and k.dest not in LOCATIONS]


def two_values(knob) -> tuple[str, str]:
    """Two strings a person could give this knob, neither its default."""
    if knob.key in GIVEN:
        return GIVEN[knob.key]
    if knob.choices:
        default = knob.default_text()
        return tuple([c for c in knob.choices if c != default][:2])  # type: ignore[return-value]
    default = knob.info.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return ("off", "on") if default else ("on", "off")
    if isinstance(default, int):
        low = next((m.ge for m in knob.info.metadata if hasattr(m, "ge")), 0)
        return str(max(default, low) + 1), str(max(default, low) + 2)
    if isinstance(default, float):
        return "0.25", "0.5"
    return "given-a", "given-b"


def wanted(knob, value: str, source: str) -> object:
    """What the graph should receive for `value` given at `source`."""
    parsed = knob.check(value, source)
    return str(Path.cwd() / parsed) if knob.key in RESOLVED else parsed


def landed(resources: dict, knob) -> object:
    resource, prefix = RESOURCE_OF[knob.section]
    value = resources[resource]
    for part in (*prefix, *knob.path):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("knob", GRAPH, ids=lambda k: k.env)
def test_the_environment_variable_reaches_the_graph(knob, captured, mini_corpus, monkeypatch):
    value, _ = two_values(knob)
    monkeypatch.setenv(knob.env, value)
    assert main(["run", "--data", str(mini_corpus)]) == 0
    assert landed(captured["resources"], knob) == wanted(knob, value, knob.env)


@pytest.mark.parametrize("knob", GRAPH, ids=lambda k: k.flag)
def test_a_flag_beats_the_environment(knob, captured, mini_corpus, monkeypatch):
    value, other = two_values(knob)
    monkeypatch.setenv(knob.env, other)
    assert main(["run", "--data", str(mini_corpus), knob.flag, value]) == 0
    assert landed(captured["resources"], knob) == wanted(knob, value, knob.flag)


@pytest.mark.parametrize(
    ("variable", "value", "where"),
    [
        ("RAR_PROJECT_DIR", "proj",
         lambda r: Path(r["mlflow"].artifact_location).parent.parent.name),
        ("MLFLOW_TRACKING_URI", "sqlite:///x.db", lambda r: r["mlflow"].tracking_uri),
        ("RAR_MLFLOW_ARTIFACTS", "mla", lambda r: Path(r["mlflow"].artifact_location).name),
        ("RAR_LANCEDB_URI", "s3://bucket/db", lambda r: r["lancedb"].uri),
    ],
)  # fmt: skip
def test_the_project_and_storage_variables_reach_the_graph(
    variable, value, where, captured, mini_corpus, monkeypatch
):
    monkeypatch.setenv(variable, value)
    assert main(["run", "--data", str(mini_corpus)]) == 0
    assert where(captured["resources"]) == value


def test_the_data_root_flag_reaches_the_graph(captured, mini_corpus):
    assert main(["run", "--data", str(mini_corpus)]) == 0
    assert captured["resources"]["corpus"].data_root == str(mini_corpus.resolve())


def test_defaults_apply_when_nothing_is_given(captured, mini_corpus, tmp_path):
    assert main(["run", "--data", str(mini_corpus)]) == 0
    resources = captured["resources"]
    assert resources["corpus"].image_check == "decode"
    assert resources["corpus"].artifacts_dir == str(tmp_path / "artifacts" / "mbeir_mini")
    assert (resources["vlm"].backend, resources["vlm"].openai.timeout_s) == ("offline", 120.0)
    assert resources["lancedb"].uri == str(tmp_path / "artifacts" / "mbeir_mini" / "lancedb")


def test_a_bad_value_is_refused_naming_its_source(captured, mini_corpus, monkeypatch, capsys):
    monkeypatch.setenv("RAR_IMAGE_CHECK", "sometimes")
    assert main(["run", "--data", str(mini_corpus)]) == 2
    assert "RAR_IMAGE_CHECK" in capsys.readouterr().err


def test_the_chosen_vlm_shapes_the_graph(captured, mini_corpus, monkeypatch):
    monkeypatch.setenv("RAR_VLM_BACKEND", "openai")
    assert main(["run", "--data", str(mini_corpus)]) == 0
    names = {k.path[-1] for a in captured["assets"] for k in a.keys}
    assert "offline_captioner" not in names and "corpus_captions" in names
