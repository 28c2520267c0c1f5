"""Tracking that survives an unreachable MLflow: a journal of a run's calls, replayed later.

The journal is replayed into MLflow once it is back (`rar sync-tracking`).

`MlflowResource` writes a run here when its store cannot be reached at the start, and
switches a run here when the store stops answering part-way (a tracking server that went
down mid-training). Training never stops for tracking. The journal is a folder per run: a
`calls.jsonl` of every call in order, and copies of the files it logged, taken when they
were logged. `replay` re-creates the run (or, for a run that began in MLflow, resumes it by
id) and renames the folder `*.synced`.

Its calls are the `RunLogger` methods, one JSON line each. Dataset inputs, logged models
and their links came later: their calls are new lines, and the fields they added to older
ones (`model_id`) are optional, so a journal written before them replays as it did.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rar_pipeline.defs.resources.tracking_rules import Registration, RunLogger, TrackedDataset

CALLS = "calls.jsonl"
SYNCED = ".synced"
JOURNAL_MODEL = "journal-model-"  # the ids of logged models created in a journal


class JournalRun(RunLogger):
    """A `RunLogger` that writes each call to a journal folder instead of MLflow.

    It applies MLflow's naming rules (`RunLogger`), so what it accepts will replay. A
    logged model created here gets an id of its own (`JOURNAL_MODEL` + hex), which the
    journal's later calls use and `replay` maps to the id MLflow gives it.

    Args:
        root: the journal's folder (one sub-folder per run).
        run_name: the run's name in MLflow.
        tags: the run's tags.
        reason: why MLflow was not used (kept for the person who syncs it).
        resume_run_id: the MLflow run this continues, when it began there.
    """

    run_url = None

    def __init__(
        self,
        root: Path,
        run_name: str,
        tags: Mapping[str, str] | None,
        reason: str,
        resume_run_id: str | None = None,
    ) -> None:
        self.run_id = resume_run_id or f"journal-{uuid.uuid4().hex[:12]}"
        stamp = time.strftime("%Y%m%dT%H%M%S")
        self.folder = Path(root) / f"{stamp}-{run_name}-{uuid.uuid4().hex[:6]}"
        self.folder.mkdir(parents=True)
        self.journal = self  # RunLogger: where this run's tracking went
        self.calls = 0
        self._append("start", run_name=run_name, tags=dict(tags or {}), reason=reason,
                     resume_run_id=resume_run_id)  # fmt: skip

    def _append(self, call: str, **fields: Any) -> None:
        with open(self.folder / CALLS, "a", encoding="utf-8") as out:
            out.write(json.dumps({"call": call, **fields}, default=str) + "\n")
            out.flush()
        self.calls += 1

    def _keep(self, source: Path) -> str:
        """Copy a logged file or folder into the journal (it may change before a sync)."""
        target = self.folder / "files" / str(self.calls) / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return str(target.relative_to(self.folder))

    def _log_params(self, params: dict[str, Any]) -> None:
        self._append("log_params", params={k: str(v) for k, v in params.items()})

    def _log_metrics(self, metrics: dict[str, float], step: int, model_id: str | None) -> None:
        linked = {"model_id": model_id} if model_id else {}  # most lines: none, left out
        self._append("log_metrics", metrics=metrics, step=step, **linked)

    def log_metric_batch(self, batch: list[tuple[str, float, int, int, str | None]]) -> None:
        """Metrics an MLflow run had buffered when the store stopped answering.

        Each is (key, value, step, ms, model_id).
        """
        for key, value, step, _, model_id in batch:
            self.log_metrics({key: value}, step=step, model_id=model_id)

    def _log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self._append("log_dict", data=data, artifact_file=artifact_file)

    def _set_tags(self, tags: dict[str, str]) -> None:
        self._append("set_tags", tags=tags)

    def _log_artifact(self, local_path: Path, artifact_path: str | None) -> None:
        self._append("log_artifact", file=self._keep(local_path), artifact_path=artifact_path)

    def _log_artifacts(self, local_dir: Path, artifact_path: str | None) -> None:
        self._append("log_artifacts", file=self._keep(local_dir), artifact_path=artifact_path)

    def _log_input(
        self, dataset: TrackedDataset | None, context: str | None, model_id: str | None
    ) -> None:
        self._append("log_input", dataset=dataclasses.asdict(dataset) if dataset else None,
                     context=context, model_id=model_id)  # fmt: skip

    def has_model(self, model_id: str) -> bool:
        """Whether the store holds a logged model: unknown here, so yes (`replay` checks)."""
        return True

    def _create_logged_model(
        self, name: str, params: dict[str, str], model_type: str | None
    ) -> str:
        model_id = f"{JOURNAL_MODEL}{uuid.uuid4().hex[:12]}"
        self._append("create_logged_model", model_id=model_id, name=name, params=params,
                     model_type=model_type)  # fmt: skip
        return model_id

    def _log_model_artifacts(self, model_id: str, local_dir: Path) -> None:
        self._append("log_model_artifacts", model_id=model_id, file=self._keep(local_dir))

    def _finalize_logged_model(self, model_id: str, status: str) -> None:
        self._append("finalize_logged_model", model_id=model_id, status=status)

    def _register_model(self, registration: Registration) -> str:
        self._append("register_model", **dataclasses.asdict(registration))
        return "pending sync"

    def end(self, status: str) -> None:
        self._append("end", status=status)

    def note(self) -> str:
        """What the UI says about the run: where its tracking went and what to do."""
        return (
            f"MLflow was unreachable: tracked in {self.folder} ({self.calls} calls); "
            "run `rar sync-tracking` once it is back"
        )


def pending(root: Path) -> list[Path]:
    """Journal folders not synced yet, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(SYNCED))


def read_calls(folder: Path) -> Iterator[dict[str, Any]]:
    """A journal's calls in order (a last line cut short by a crash is skipped)."""
    for line in (Path(folder) / CALLS).read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


class _Failed(Exception):
    """The journaled run had failed: replayed as FAILED."""


def replay(folder: Path, mlflow: Any) -> str:
    """Write a journal's calls into MLflow; returns the run id, and marks the folder synced.

    Args:
        folder: one run's journal.
        mlflow: an `MlflowResource` (its `start_run` makes or resumes the run).
    """
    calls = list(read_calls(folder))
    start, *rest = calls
    if start["call"] != "start":
        raise ValueError(f"{folder} is not a tracking journal (it does not begin with start)")
    status = next((c["status"] for c in rest if c["call"] == "end"), "FINISHED")
    run_id = ""
    models: dict[str, str] = {}  # the journal's logged model ids -> MLflow's
    try:
        with mlflow.start_run(start["run_name"], tags=start["tags"],
                              run_id=start.get("resume_run_id")) as run:  # fmt: skip
            run_id = run.run_id
            run.set_tags({"rar.tracking_journal": folder.name})
            for call in rest:
                _apply(run, call, folder, models)
            if status != "FINISHED":
                raise _Failed(status)
    except _Failed:
        pass
    folder.rename(folder.with_name(folder.name + SYNCED))
    return run_id


def _apply(run: Any, call: dict[str, Any], folder: Path, models: dict[str, str]) -> None:
    """Replay one call, with the journal's logged model ids mapped to MLflow's.

    Journals written before logged models existed have no `model_id` fields (nor the calls
    that make them): they replay as they always did.
    """
    kind = call["call"]
    model_id = call.get("model_id")
    model_id = models.get(model_id, model_id) if model_id else None
    if kind == "log_params":
        run.log_params(call["params"])
    elif kind == "log_metrics":
        run.log_metrics(call["metrics"], step=call["step"], model_id=model_id)
    elif kind == "log_dict":
        run.log_dict(call["data"], call["artifact_file"])
    elif kind == "set_tags":
        run.set_tags(call["tags"])
    elif kind == "log_artifact":
        run.log_artifact(folder / call["file"], call["artifact_path"])
    elif kind == "log_artifacts":
        run.log_artifacts(folder / call["file"], call["artifact_path"])
    elif kind == "log_input":
        dataset = TrackedDataset(**call["dataset"]) if call["dataset"] else None
        run.log_input(dataset, call["context"], model_id=model_id)
    elif kind == "create_logged_model":
        models[call["model_id"]] = run.create_logged_model(call["name"], call["params"],
                                                           call["model_type"])  # fmt: skip
    elif kind == "log_model_artifacts":
        run.log_model_artifacts(model_id, folder / call["file"])
    elif kind == "finalize_logged_model":
        run.finalize_logged_model(model_id, call["status"])
    elif kind == "register_model":
        run.register_model(call["name"], call["artifact_path"], call["tags"],
                           call["description"], model_id=model_id)  # fmt: skip
