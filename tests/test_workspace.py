"""Several corpora side by side in one Dagster UI (`rar ui`, `defs/workspace.py`): one
code location per corpus, each in its own namespace."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from rar_pipeline.cli import main
from rar_pipeline.defs.workspace import write_workspace
from rar_pipeline.stack.processes import free_port, server_process
from tests.projects import PROJECT_VARS, point_at_project

LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
KEYS = "{ assetNodes { assetKey { path } } }"


def graphql(url: str, query: str) -> dict:
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())["data"]


@pytest.fixture
def two_corpora(mini_corpus: Path, tmp_path: Path) -> list[Path]:
    other = tmp_path / "shop-2"
    shutil.copytree(mini_corpus, other)
    return [mini_corpus, other]


def test_each_corpus_is_a_code_location_named_by_its_namespace(two_corpora, tmp_path):
    workspace = write_workspace(tmp_path / "ws", two_corpora, tmp_path)
    entries = [e["python_file"] for e in yaml.safe_load(workspace.read_text())["load_from"]]
    assert [e["location_name"] for e in entries] == ["mbeir_mini", "shop_2"]
    module = Path(entries[1]["relative_path"]).read_text()
    assert f"definitions_for({str(two_corpora[1])!r})" in module


def test_two_folders_of_one_name_are_refused(two_corpora, tmp_path):
    same = tmp_path / "elsewhere" / "mbeir_mini"
    shutil.copytree(two_corpora[0], same)
    with pytest.raises(ValueError, match="share the namespace"):
        write_workspace(tmp_path / "ws", [two_corpora[0], same], tmp_path)


def test_rar_ui_starts_dagster_dev_on_127_0_0_1_with_a_location_per_corpus(
    two_corpora, tmp_path, monkeypatch
):
    point_at_project(monkeypatch, tmp_path)
    started = []

    def execve(path, argv, env):  # what replaces the process
        started.append((argv, env))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", execve)
    argv = ["ui", "--data", str(two_corpora[0]), "--data", str(two_corpora[1]), "--port", "3311"]
    with pytest.raises(SystemExit):
        main(argv)
    [(command, env)] = started
    assert command[1:6] == ["dev", "-h", "127.0.0.1", "-p", "3311"]
    workspace = yaml.safe_load(Path(command[-1]).read_text())
    assert len(workspace["load_from"]) == 2
    assert env["DAGSTER_HOME"] == str(tmp_path / "dagster_home")
    assert main(["ui", "--data", str(tmp_path)]) == 2  # not a corpus: said before starting


@pytest.mark.slow
def test_one_ui_shows_both_corpora_side_by_side(two_corpora, tmp_path):
    workspace = write_workspace(tmp_path / "ws", two_corpora, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARS}
    env |= {"DAGSTER_HOME": str(tmp_path / "dagster_home"), "RAR_PROJECT_DIR": str(tmp_path)}
    (tmp_path / "dagster_home").mkdir()
    url = f"http://127.0.0.1:{free_port()}"
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "dev", "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1], "-w", str(workspace)]

    def ready() -> bool:
        entries = graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
        return all(e["locationOrLoadError"] for e in entries)

    with server_process(command, ready, env=env, log=tmp_path / "dev.log", cwd=tmp_path):
        entries = graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
        loaded = {e["name"]: e["locationOrLoadError"]["__typename"] for e in entries}
        assert loaded == {"mbeir_mini": "RepositoryLocation", "shop_2": "RepositoryLocation"}
        keys = [n["assetKey"]["path"] for n in graphql(url, KEYS)["assetNodes"]]
        assert {k[0] for k in keys} == {"mbeir_mini", "shop_2"}
        assert ["mbeir_mini", "corpus_captions"] in keys and ["shop_2", "corpus_captions"] in keys
