"""MLflow unreachable: the run goes on in a local journal, and `rar sync-tracking` replays it
into MLflow once the store is back, with nothing lost."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rar_pipeline.cli import main
from rar_pipeline.defs.resources import MlflowResource
from rar_pipeline.defs.resources.mlflow import unreachable
from rar_pipeline.defs.resources.tracking_journal import pending, read_calls, replay
from tests.projects import point_at_project


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def store(tmp_path: Path, **kw) -> MlflowResource:
    return MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlartifacts"),
        **kw,
    )


def track(run, checkpoint: Path) -> None:
    """What a training asset logs: params, per-step metrics, tags, a dict, files, a model."""
    run.log_params({"lr": 0.001, "epochs": 3})
    for step in range(5):
        run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    run.set_tags({"config": "full"})
    run.log_dict({"rows": [1, 2]}, "pairs_sample.json")
    run.log_artifacts(checkpoint, "checkpoint")
    run.register_model("rar-test-full", "checkpoint")


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"w" * 100)
    (folder / "checkpoint.json").write_text("{}")
    return folder


def assert_synced(tmp_path: Path, run_name: str) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rar_pipeline").experiment_id
    (run,) = client.search_runs([experiment], f"attributes.run_name = '{run_name}'")
    assert run.data.params == {"lr": "0.001", "epochs": "3"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [
        1.0, 0.5, 1 / 3, 0.25, 0.2
    ]  # fmt: skip
    assert run.data.tags["config"] == "full" and run.info.status == "FINISHED"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert files == {"checkpoint/weights.safetensors", "checkpoint/checkpoint.json"}
    (version,) = client.search_model_versions("name = 'rar-test-full'")
    assert version.run_id == run.info.run_id


def test_an_unreachable_server_at_the_start_journals_the_whole_run(tmp_path, checkpoint):
    down = MlflowResource(
        tracking_uri=f"http://127.0.0.1:{closed_port()}",
        artifact_location=str(tmp_path / "mlartifacts"),
        journal_dir=str(tmp_path / "journal"),
    )
    with down.start_run("train-demo-full", tags={"corpus": "demo"}) as run:
        track(run, checkpoint)
    assert run.journal is not None and run.run_url is None
    assert "rar sync-tracking" in run.journal.note()
    # the files were copied when logged: a checkpoint rewritten meanwhile cannot leak in
    (checkpoint / "weights.safetensors").write_bytes(b"changed")
    (folder,) = pending(tmp_path / "journal")
    calls = [c["call"] for c in read_calls(folder)]
    assert calls[0] == "start" and calls[-1] == "end" and calls.count("log_metrics") == 5

    replay(folder, store(tmp_path))
    assert_synced(tmp_path, "train-demo-full")
    assert pending(tmp_path / "journal") == []  # synced once


def test_a_store_that_stops_answering_part_way_moves_the_rest_of_the_run(
    tmp_path, checkpoint, monkeypatch
):
    from mlflow.tracking import MlflowClient as Client

    tracker = store(tmp_path, journal_dir=str(tmp_path / "journal"))
    real = Client.log_batch

    def flaky(self, run_id, metrics=(), **kw):
        if metrics:  # the server went down once the params were in
            raise ConnectionError("Connection refused")
        return real(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(Client, "log_batch", flaky)
    with tracker.start_run("train-demo-full") as run:
        track(run, checkpoint)
    monkeypatch.undo()
    assert run.journal is not None
    # MLflow holds the start of the run (marked RUNNING: its end is in the journal)
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    assert client.get_run(run.run_id).info.status == "RUNNING"
    # back up: the journal resumes that same run and finishes it
    (folder,) = pending(tmp_path / "journal")
    assert replay(folder, store(tmp_path)) == run.run_id
    assert_synced(tmp_path, "train-demo-full")


def test_mistakes_are_not_mistaken_for_an_outage(tmp_path):
    tracker = store(tmp_path, journal_dir=str(tmp_path / "journal"))
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="Names may only contain"):
        with tracker.start_run("r") as run:
            run.log_params({"bad name!": 1})
    assert pending(tmp_path / "journal") == []
    assert unreachable(ConnectionRefusedError()) and not unreachable(ValueError("x"))


def test_without_a_journal_an_outage_fails_loudly(tmp_path):
    down = MlflowResource(tracking_uri=f"http://127.0.0.1:{closed_port()}",
                          artifact_location=str(tmp_path / "a"))  # fmt: skip
    with pytest.raises(ConnectionError, match="does not answer"):
        with down.start_run("r"):
            pass


def test_rar_sync_tracking_replays_every_pending_run(tmp_path, checkpoint, monkeypatch, capsys):
    point_at_project(monkeypatch, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("RAR_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    journal = tmp_path / "artifacts" / "demo" / "tracking_journal"
    down = MlflowResource(tracking_uri=f"http://127.0.0.1:{closed_port()}",
                          artifact_location="x", journal_dir=str(journal))  # fmt: skip
    with down.start_run("train-demo-full") as run:
        track(run, checkpoint)
    assert main(["sync-tracking"]) == 0
    assert "synced to sqlite" in capsys.readouterr().out
    assert_synced(tmp_path, "train-demo-full")
    assert main(["sync-tracking"]) == 0
    assert "nothing to sync" in capsys.readouterr().out
