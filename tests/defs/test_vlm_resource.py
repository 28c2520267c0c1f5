"""`VLMResource` is the VLM's section and the run options' section, inherited, not copied."""

from __future__ import annotations

from pathlib import Path

from rar_pipeline.core.enhance.engine import DEFAULT_OPTIONS
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.vlm.config import VLMConfig
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.resources import VLMResource, resources_from_settings


def test_its_fields_and_defaults_are_the_sections():
    assert VLMResource().vlm_config() == VLMConfig()
    assert VLMResource().options() == DEFAULT_OPTIONS
    assert set(VLMConfig.model_fields) < set(VLMResource.model_fields)


def test_the_run_options_reach_the_engine_s_options():
    options = VLMResource(
        enhance={"temperature": 0.7, "batch_size": 4, "guard": "strip",
                 "query_type_overrides": {"t": "qa"}},
    ).options()  # fmt: skip
    assert options.temperature == 0.7 and options.batch_size == 4
    assert options.guard is GuardPolicy.STRIP and dict(options.query_type_overrides) == {"t": "qa"}


def test_settings_choose_the_backend_and_the_guard(tmp_path: Path):
    settings = load_settings(
        {"RAR_PROJECT_DIR": str(tmp_path)}, backend="vllm", model_id="org/m", guard="drop"
    )
    resource = resources_from_settings(settings)["vlm"]
    assert (resource.backend, resource.model_id) == ("vllm", "org/m")
    assert resource.enhance.guard is GuardPolicy.DROP
    assert resource.resolved_model_id() == "org/m"


def test_a_knob_set_on_the_resource_reaches_the_backend(tmp_path: Path):
    vllm = VLMResource(backend="vllm", vllm={"engine_batch_size": 8, "max_model_len": 2048},
                       enhance={"seed": 3})  # fmt: skip
    backend = vllm.create(ArtifactLayout(tmp_path))
    assert backend.config.engine_batch_size == 8
    assert backend.engine_kwargs()["max_model_len"] == 2048
    assert backend.engine_kwargs()["seed"] == 3


def test_code_versions_change_with_sampling_and_overrides_not_with_transport():
    base = VLMResource(backend="openai").code_versions()
    assert VLMResource(backend="openai", enhance={"temperature": 0.5}).code_versions() != base
    overridden = VLMResource(backend="openai", enhance={"query_type_overrides": {"t": "qa"}})
    assert overridden.code_versions()["enhanced_queries"] != base["enhanced_queries"]
    assert overridden.code_versions()["corpus_captions"] == base["corpus_captions"]
    # where the server is or how long we wait does not change what it writes
    elsewhere = VLMResource(backend="openai", openai={"timeout_s": 5, "base_url": "http://x:1/v1"})
    assert elsewhere.code_versions() == base
