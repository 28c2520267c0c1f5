"""`rar serve`: the search page's own settings (flag, then environment, then default)."""

from __future__ import annotations

import pytest
import uvicorn
from starlette.testclient import TestClient

from rar_pipeline.cli import main
from rar_pipeline.core.search.query import SearchPageConfig
from tests.projects import point_at_project


@pytest.fixture
def served(demo_project, monkeypatch) -> dict:
    """What `rar serve` hands uvicorn; nothing listens."""
    point_at_project(monkeypatch, demo_project.root)
    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(app=app, **options))
    return seen


def test_the_page_s_settings_reach_it(served, monkeypatch):
    monkeypatch.setenv("RAR_SEARCH_UPLOAD_QUOTA_MB", "7")
    monkeypatch.setenv("RAR_SEARCH_MAX_UPLOAD_MB", "5")
    argv = ["serve", "--max-upload-mb", "2", "--allowed-hosts", "a.example, b.example"]
    assert main(argv) == 0
    assert served["app"].state.search.config == SearchPageConfig(
        max_upload_mb=2, upload_quota_mb=7, allowed_hosts=["a.example", "b.example"]
    )
    assert (served["host"], served["port"]) == ("127.0.0.1", 8765)
    client = TestClient(served["app"], base_url="http://a.example")
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz", headers={"host": "c.example"}).status_code == 400


def test_serving_on_an_address_answers_to_that_address(served, capsys):
    assert main(["serve", "--host", "10.0.0.5"]) == 0
    assert served["app"].state.search.config.allowed_hosts == ["10.0.0.5"]
    assert "no authentication" in capsys.readouterr().out


def test_page_numbers_out_of_bounds_are_refused(served, capsys):
    for argv in (["--port", "70000"], ["--max-upload-mb", "0"], ["--upload-quota-mb", "x"]):
        with pytest.raises(SystemExit) as exited:
            main(["serve", *argv])
        assert exited.value.code == 2 and argv[0] in capsys.readouterr().err
