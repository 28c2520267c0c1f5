"""Settings: each component's typed section, one precedence (flag, then environment, then
default), and every variable, flag and doc line generated from the fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from rar_pipeline.core.enhance.engine import EnhanceOptions
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.vlm.config import VLMConfig
from rar_pipeline.core.retrieval.options import TrainOptions
from rar_pipeline.core.settings import KNOBS, SECTIONS, configuration_page, load_settings

PROJECT = Path(__file__).resolve().parents[2]


def test_defaults_live_under_the_project_folder(tmp_path: Path):
    settings = load_settings({"RAR_PROJECT_DIR": str(tmp_path)})
    assert settings.data_root == tmp_path / "data" / "demo"
    assert settings.artifacts_dir == tmp_path / "artifacts" / "demo"
    storage = settings.storage
    assert storage.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert storage.lancedb_uri == str(tmp_path / "artifacts" / "demo" / "lancedb")
    assert settings.dagster_home == tmp_path / "dagster_home"
    assert settings.corpus.image_check == "decode" and settings.enhance.guard is GuardPolicy.KEEP


def test_each_component_s_defaults_are_its_section_s(tmp_path: Path):
    settings = load_settings({"RAR_PROJECT_DIR": str(tmp_path)})
    assert settings.vlm == VLMConfig() and settings.enhance == EnhanceOptions()
    assert settings.training == TrainOptions()


def test_the_environment_beats_defaults_and_a_flag_beats_the_environment(tmp_path: Path):
    env = {"RAR_PROJECT_DIR": str(tmp_path), "RAR_IMAGE_CHECK": "exists"}
    assert load_settings(env).corpus.image_check == "exists"
    assert load_settings(env, image_check="header").corpus.image_check == "header"
    assert load_settings(env, image_check=None).corpus.image_check == "exists"  # not given


def test_later_defaults_follow_earlier_settings(tmp_path: Path):
    settings = load_settings({"RAR_PROJECT_DIR": str(tmp_path)}, data_root=tmp_path / "MBEIR")
    assert settings.artifacts_dir == tmp_path / "artifacts" / "MBEIR"
    assert settings.storage.lancedb_uri == str(tmp_path / "artifacts" / "MBEIR" / "lancedb")


def test_every_field_is_a_setting_even_deep_in_a_backend_s_section(tmp_path: Path):
    env = {"RAR_PROJECT_DIR": str(tmp_path), "RAR_VLM_OPENAI_MAX_CONCURRENCY": "3",
           "RAR_ENHANCE_QUERY_TYPE_OVERRIDES": '{"t7": "modification"}',
           "RAR_SEARCH_ALLOWED_HOSTS": "a.example, b.example"}  # fmt: skip
    settings = load_settings(env, vlm__vllm__tensor_parallel_size=2)
    assert settings.vlm.openai.max_concurrency == 3
    assert settings.vlm.vllm.tensor_parallel_size == 2
    assert settings.enhance.query_type_overrides == {"t7": "modification"}
    assert settings.search.allowed_hosts == ["a.example", "b.example"]


def test_numbers_are_parsed_and_bad_values_name_their_source(tmp_path: Path):
    env = {"RAR_PROJECT_DIR": str(tmp_path), "RAR_VLM_TIMEOUT_S": "30"}
    assert load_settings(env).vlm.openai.timeout_s == 30.0
    with pytest.raises(ValueError, match="RAR_VLM_TIMEOUT_S"):
        load_settings({**env, "RAR_VLM_TIMEOUT_S": "soon"})
    with pytest.raises(ValueError, match="RAR_VLM_TIMEOUT_S: -1.0 .*greater than 0"):
        load_settings({**env, "RAR_VLM_TIMEOUT_S": "-1"})
    with pytest.raises(ValueError, match="--vlm-backend.*offline"):
        load_settings(env, backend="gpt-telepathy")
    with pytest.raises(ValueError, match="RAR_LR: 'inf' .*not a finite number"):
        load_settings({**env, "RAR_LR": "inf"})
    with pytest.raises(ValueError, match="unknown setting 'colour'"):
        load_settings(env, colour="blue")
    with pytest.raises(ValueError, match="unknown setting 'seed'"):  # two sections have one
        load_settings(env, seed=3)


def test_every_rar_variable_is_read_in_one_place():
    """No module but core/settings.py reads a RAR_* variable from the environment."""
    package = PROJECT / "rar_pipeline"
    readers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if "RAR_" in (text := path.read_text()) and ("os.environ" in text or "getenv" in text)
    ]
    assert readers == ["core/settings.py"]


def test_every_variable_and_flag_is_one_setting_s():
    assert len({k.env for k in KNOBS}) == len(KNOBS)
    assert len({k.flag for k in KNOBS}) == len(KNOBS)
    assert {k.section for k in KNOBS} == set(SECTIONS)


def test_the_configuration_page_is_generated_from_the_fields():
    page = (PROJECT / "docs" / "configuration.md").read_text()
    assert page == configuration_page(), "docs/configuration.md is out of date: run make docs"
    for knob in KNOBS:
        assert f"`{knob.env}`" in page, knob.env
