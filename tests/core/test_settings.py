"""Settings: one table, one precedence (flag, then environment, then default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rar_pipeline.core.enhance.vlm.config import DEFAULTS
from rar_pipeline.core.settings import BY_NAME, SETTINGS, load_settings


def test_defaults_live_under_the_project_folder(tmp_path: Path):
    settings = load_settings({"RAR_PROJECT_DIR": str(tmp_path)})
    assert settings.data_root == tmp_path / "data" / "demo"
    assert settings.artifacts_dir == tmp_path / "artifacts" / "demo"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert settings.lancedb_uri == str(tmp_path / "artifacts" / "demo" / "lancedb")
    assert settings.dagster_home == tmp_path / "dagster_home"
    assert settings.image_check == "decode" and settings.hallucination_policy == "keep"


def test_vlm_defaults_come_from_the_one_backend_config(tmp_path: Path):
    config = load_settings({"RAR_PROJECT_DIR": str(tmp_path)}).vlm_config()
    assert config == DEFAULTS


def test_the_environment_beats_defaults_and_a_flag_beats_the_environment(tmp_path: Path):
    env = {"RAR_PROJECT_DIR": str(tmp_path), "RAR_IMAGE_CHECK": "exists"}
    assert load_settings(env).image_check == "exists"
    assert load_settings(env, image_check="header").image_check == "header"
    assert load_settings(env, image_check=None).image_check == "exists"  # None: not given


def test_later_defaults_follow_earlier_settings(tmp_path: Path):
    settings = load_settings({"RAR_PROJECT_DIR": str(tmp_path)}, data_root=tmp_path / "MBEIR")
    assert settings.artifacts_dir == tmp_path / "artifacts" / "MBEIR"
    assert settings.lancedb_uri == str(tmp_path / "artifacts" / "MBEIR" / "lancedb")


def test_numbers_are_parsed_and_bad_values_name_their_source(tmp_path: Path):
    env = {"RAR_PROJECT_DIR": str(tmp_path), "RAR_VLM_TIMEOUT_S": "30"}
    assert load_settings(env).vlm_timeout_s == 30.0
    with pytest.raises(ValueError, match="RAR_VLM_TIMEOUT_S"):
        load_settings({**env, "RAR_VLM_TIMEOUT_S": "soon"})
    with pytest.raises(ValueError, match="--vlm-backend.*offline"):
        load_settings(env, vlm_backend="gpt-telepathy")
    with pytest.raises(ValueError, match="unknown settings"):
        load_settings(env, colour="blue")


def test_every_rar_variable_is_read_in_one_place():
    """No module but core/settings.py reads a RAR_* variable from the environment."""
    package = Path(__file__).resolve().parents[2] / "rar_pipeline"
    readers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if "RAR_" in (text := path.read_text()) and ("os.environ" in text or "getenv" in text)
    ]
    assert readers == ["core/settings.py"]


def test_every_setting_is_documented_in_the_configuration_page():
    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in page, setting.env
        if setting.flag:
            assert f"`{setting.flag}`" in page, setting.flag


def test_the_table_has_one_row_per_setting():
    assert len(BY_NAME) == len(SETTINGS)
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    assert len({s.flag for s in SETTINGS if s.flag}) == len([s for s in SETTINGS if s.flag])
