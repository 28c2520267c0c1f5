"""`VLMResource` mirrors the one backend config and the run options, defaults included."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rar_pipeline.core.enhance.engine import DEFAULT_OPTIONS
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.vlm.config import DEFAULTS, VLMConfig
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.resources import VLMResource


def test_every_backend_knob_is_a_field_with_the_configs_default():
    resource = VLMResource()
    for field in dataclasses.fields(VLMConfig):
        assert getattr(resource, field.name) == getattr(DEFAULTS, field.name), field.name
    assert resource.vlm_config() == DEFAULTS


def test_the_run_options_default_to_the_engines_defaults():
    assert VLMResource().options() == DEFAULT_OPTIONS
    options = VLMResource(
        temperature=0.7,
        batch_size=4,
        hallucination_policy="strip",
        query_type_overrides={"t": "qa"},
    ).options()
    assert options.temperature == 0.7 and options.batch_size == 4
    assert options.guard is GuardPolicy.STRIP and dict(options.query_type_overrides) == {"t": "qa"}


def test_settings_choose_the_backend_and_the_guard(tmp_path: Path):
    settings = load_settings(
        {"RAR_PROJECT_DIR": str(tmp_path)},
        vlm_backend="vllm",
        vlm_model="org/m",
        hallucination_policy="drop",
    )
    resource = VLMResource.from_settings(settings)
    assert (resource.backend, resource.model_id, resource.hallucination_policy) == (
        "vllm",
        "org/m",
        "drop",
    )
    assert resource.resolved_model_id() == "org/m"


def test_a_knob_set_on_the_resource_reaches_the_backend(tmp_path: Path):
    vllm = VLMResource(backend="vllm", engine_batch_size=8, max_model_len=2048, seed=3)
    backend = vllm.create(ArtifactLayout(tmp_path))
    assert backend.batch_size == 8
    assert backend.engine_kwargs()["max_model_len"] == 2048
    assert backend.engine_kwargs()["seed"] == 3


def test_code_versions_change_with_sampling_and_overrides_not_with_transport():
    base = VLMResource(backend="openai").code_versions()
    assert VLMResource(backend="openai", temperature=0.5).code_versions() != base
    overridden = VLMResource(backend="openai", query_type_overrides={"t": "qa"}).code_versions()
    assert overridden["enhanced_queries"] != base["enhanced_queries"]
    assert overridden["corpus_captions"] == base["corpus_captions"]
    # where the server is or how long we wait does not change what it writes
    assert VLMResource(backend="openai", timeout_s=5, base_url="http://x:1/v1").code_versions() == (
        base
    )
