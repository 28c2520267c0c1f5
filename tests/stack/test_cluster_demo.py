"""`rar stack demo` (`make cluster-demo`): the demo on a throwaway stack prints the table
that `rar demo` prints on one machine, and writes nothing in the project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rar_pipeline.cli import _report_text
from rar_pipeline.core.layout import ArtifactLayout
from tests.conftest import require_server
from tests.projects import TINY_DEMO

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("RAR_TEST_CLUSTER_DEMO"),
    reason="`rar stack demo` end to end takes ~5 minutes, more than CI's budget leaves: "
    "make test-cluster-demo (tests/stack/test_cluster_run.py runs the mini corpus on a "
    "stack in every make test)",
)
def test_the_demo_on_a_stack_prints_the_one_machine_ablation_table(demo_project, tmp_path):
    for program in ("initdb", "redis-server", "weed"):
        require_server(program)
    project = tmp_path / "project"  # the clone as a user has it: deploy/, no data, no outputs
    (project / "deploy").mkdir(parents=True)
    (project / "deploy" / "dagster.yaml").write_bytes(
        (REPO / "deploy" / "dagster.yaml").read_bytes()
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAR_", "DAGSTER_", "MLFLOW_"))}
    env["RAR_PROJECT_DIR"] = str(project)
    process = subprocess.Popen(
        [sys.executable, "-m", "rar_pipeline.cli", "stack", *TINY_DEMO, "--workers", "2"],
        env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        process.terminate()  # `rar stack` stops its servers on SIGTERM
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    expected = _report_text(ArtifactLayout(demo_project.artifacts), "table")
    assert expected in out
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == [
        "deploy",
        "deploy/dagster.yaml",
    ]
