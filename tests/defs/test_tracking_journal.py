"""MLflow unreachable: the run goes on in a local journal, and `rar sync-tracking` replays it
into MLflow once the store is back, with nothing lost."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rar_pipeline.cli import main
from rar_pipeline.defs.resources import MlflowResource
from rar_pipeline.defs.resources.tracking_journal import (
    CALLS,
    JOURNAL_MODEL,
    pending,
    read_calls,
    replay,
)
from rar_pipeline.defs.resources.tracking_rules import TrackedDataset, unreachable
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


PAIRS = TrackedDataset("training_pairs_full", "0123456789abcdef", "/data/pairs.parquet",
                       schema='{"mlflow_colspec": []}', profile='{"num_rows": 2}')  # fmt: skip


def track(run, checkpoint: Path) -> str:
    """What a training asset logs; returns the id of the logged model it created.

    Params, its data, per-step metrics, tags, a dict, files, the checkpoint as a logged model
    and that model's registration.
    """
    run.log_params({"lr": 0.001, "epochs": 3})
    run.log_input(PAIRS, context="training")
    model_id = run.create_logged_model("rar-test-full", params={"lr": 0.001})
    for step in range(5):
        run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    run.log_metrics({"best_val_recall_at_1": 0.5}, model_id=model_id)
    run.set_tags({"config": "full"})
    run.log_dict({"rows": [1, 2]}, "pairs_sample.json")
    run.log_artifacts(checkpoint, "checkpoint")
    run.log_model_artifacts(model_id, checkpoint)
    run.finalize_logged_model(model_id)
    run.register_model("rar-test-full", model_id=model_id)
    return model_id


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"w" * 100)
    (folder / "checkpoint.json").write_text("{}")
    return folder


def assert_synced(tmp_path: Path, run_name: str, *, logged_model: bool = True) -> None:
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
    if not logged_model:  # a journal written before runs had datasets and logged models
        return
    (given,) = run.inputs.dataset_inputs
    assert (given.dataset.name, given.dataset.digest) == (PAIRS.name, PAIRS.digest)
    assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "training"}
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert (model.name, str(model.status), model.source_run_id) == (
        "rar-test-full", "READY", run.info.run_id
    )  # fmt: skip
    assert model.params == {"lr": "0.001"}
    assert {m.key: m.value for m in model.metrics} == {"best_val_recall_at_1": 0.5}
    stored = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert stored == {"weights.safetensors", "checkpoint.json"}
    assert version.source == model.artifact_location
    assert json.loads(model.tags["mlflow.modelVersions"]) == [
        {"name": "rar-test-full", "version": "1"}
    ]


def test_an_unreachable_server_at_the_start_journals_the_whole_run(tmp_path, checkpoint):
    down = MlflowResource(
        tracking_uri=f"http://127.0.0.1:{closed_port()}",
        artifact_location=str(tmp_path / "mlartifacts"),
        journal_dir=str(tmp_path / "journal"),
    )
    with down.start_run("train-demo-full", tags={"corpus": "demo"}) as run:
        model_id = track(run, checkpoint)
    assert run.journal is not None and run.run_url is None
    assert "rar sync-tracking" in run.journal.note()
    assert model_id.startswith(JOURNAL_MODEL)  # the journal's own id, mapped when replayed
    # an evaluation of that model, journaled too: the link cannot be made after a sync
    with down.start_run("eval-demo-full") as evaluation:
        evaluation.log_input(model_id=model_id)
        evaluation.log_metrics({"recall": 0.5}, model_id=model_id)
    # the files were copied when logged: a checkpoint rewritten meanwhile cannot leak in
    (checkpoint / "weights.safetensors").write_bytes(b"changed")
    (train,) = [f for f in pending(tmp_path / "journal") if "-train-" in f.name]
    (evaluated,) = [f for f in pending(tmp_path / "journal") if "-eval-" in f.name]
    calls = [c["call"] for c in read_calls(train)]
    assert calls[0] == "start" and calls[-1] == "end" and calls.count("log_metrics") == 6

    replay(train, store(tmp_path))
    assert_synced(tmp_path, "train-demo-full")
    replay(evaluated, store(tmp_path))  # the model it names is not in MLflow: not linked
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (synced,) = client.search_runs(
        [client.get_experiment_by_name("rar_pipeline").experiment_id],
        "attributes.run_name = 'eval-demo-full'",
    )
    assert synced.inputs.model_inputs == [] and synced.data.metrics == {"recall": 0.5}
    assert pending(tmp_path / "journal") == []  # synced once


def test_a_journal_written_before_logged_models_still_replays(tmp_path, checkpoint):
    """The calls as the journal wrote them before runs had datasets and logged models."""
    folder = tmp_path / "journal" / "20250101T000000-train-demo-full-abc123"
    kept = folder / "files" / "6" / "ckpt"
    kept.mkdir(parents=True)
    for path in checkpoint.iterdir():
        (kept / path.name).write_bytes(path.read_bytes())
    lines = [
        {"call": "start", "run_name": "train-demo-full", "tags": {"corpus": "demo"},
         "reason": "ConnectionError: refused", "resume_run_id": None},
        {"call": "log_params", "params": {"lr": "0.001", "epochs": "3"}},
        *({"call": "log_metrics", "metrics": {"loss": 1.0 / (step + 1)}, "step": step}
          for step in range(5)),
        {"call": "set_tags", "tags": {"config": "full"}},
        {"call": "log_dict", "data": {"rows": [1, 2]}, "artifact_file": "pairs_sample.json"},
        {"call": "log_artifacts", "file": "files/6/ckpt", "artifact_path": "checkpoint"},
        {"call": "register_model", "name": "rar-test-full", "artifact_path": "checkpoint",
         "tags": {}, "description": None},
        {"call": "end", "status": "FINISHED"},
    ]  # fmt: skip
    (folder / CALLS).write_text("".join(json.dumps(line) + "\n" for line in lines))
    replay(folder, store(tmp_path))
    assert_synced(tmp_path, "train-demo-full", logged_model=False)


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
        model_id = track(run, checkpoint)
    monkeypatch.undo()
    assert run.journal is not None
    assert not model_id.startswith(JOURNAL_MODEL)  # made in MLflow before it went down
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

    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        with tracker.start_run("r") as run:
            run.log_params({"lr": 1})
            run.log_params({"lr": 2})  # refused by MLflow
    with pytest.raises(ValueError, match="Names may only contain"):
        with tracker.start_run("r") as run:
            run.log_params({"bad name!": 1})  # refused before MLflow is asked
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
