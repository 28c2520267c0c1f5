"""A run killed with kill -9 stays STARTED in run storage; the next `rar` run cleans it up."""

from __future__ import annotations

import socket
import subprocess
import sys

import dagster as dg
from dagster._core.test_utils import create_run_for_test

from rar_pipeline.defs.launch import LAUNCHED_BY, fail_stale_runs, stale_runs


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _run(instance, pid: int, host: str | None = None, **tags):
    return create_run_for_test(
        instance,
        status=dg.DagsterRunStatus.STARTED,
        tags={**LAUNCHED_BY, "rar/pid": str(pid), "rar/host": host or socket.gethostname(), **tags},
    )


def test_a_run_whose_process_is_gone_is_marked_failed_with_the_reason():
    with dg.instance_for_test() as instance:
        dead = _run(instance, _dead_pid())
        alive = _run(instance, 1)  # pid 1 always exists
        elsewhere = _run(instance, _dead_pid(), host="another-machine")
        assert [r.run_id for r in stale_runs(instance)] == [dead.run_id]
        assert fail_stale_runs(instance) == [dead.run_id]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
        assert instance.get_run_by_id(elsewhere.run_id).status == dg.DagsterRunStatus.STARTED
        logs = instance.all_logs(dead.run_id)
        assert any("was killed or crashed" in (e.message or "") for e in logs)
        assert fail_stale_runs(instance) == []  # and only once


def test_the_next_rar_run_reports_the_cleanup(mini_corpus, tmp_path, monkeypatch, capsys):
    from rar_pipeline.cli import main

    monkeypatch.setenv("RAR_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        dead = _run(instance, _dead_pid())
    monkeypatch.setenv("RAR_VLM_BACKEND", "openai")  # no offline captioner to fit
    monkeypatch.setenv("RAR_VLM_BASE_URL", "http://127.0.0.1:9/v1")
    from rar_pipeline.defs import launch

    real = launch.run_pipeline

    def ingest_only(settings, *, assets, **kwargs):
        kept = [a for a in assets if {k.path[-1] for k in a.keys} <= {"candidate_pool"}]
        return real(settings, assets=kept, **kwargs)

    monkeypatch.setattr(launch, "run_pipeline", ingest_only)
    assert main(["run", "--data", str(mini_corpus)]) == 0
    assert (
        "marked 1 run(s) failed that a killed rar process left STARTED" in capsys.readouterr().out
    )
    instance = dg.DagsterInstance.get()  # DAGSTER_HOME points at the same folder
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
