"""Tracking that survives an unreachable MLflow: a journal of a run's calls, replayed later.

The journal is replayed into MLflow once it is back (`rar sync-tracking`).

`MlflowResource` writes a run here when its store cannot be reached at the start, and
switches a run here when the store stops answering part-way (a tracking server that went
down mid-training). Training never stops for tracking. The journal is a folder per run: a
`calls.jsonl` of every call in order, and copies of the files it logged, taken when they
were logged. `replay` re-creates the run (or, for a run that began in MLflow, resumes it by
id) and renames the folder `*.synced`.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rar_pipeline.defs.resources.tracking_rules import (
    check_artifact_path,
    check_local_dir,
    check_local_file,
    check_name,
    check_registration,
)

CALLS = "calls.jsonl"
SYNCED = ".synced"


class JournalRun:
    """A `RunLogger` that writes each call to a journal folder instead of MLflow.

    It applies MLflow's naming rules, so what it accepts will replay.

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

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key in params:
            check_name(key)
        self._append("log_params", params={k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key in metrics:
            check_name(key)
        self._append("log_metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step)

    def log_metric_batch(self, batch: list[tuple[str, float, int, int]]) -> None:
        """Metrics an MLflow run had buffered when the store stopped answering."""
        for key, value, step, _ in batch:
            self.log_metrics({key: value}, step=step)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._append("log_dict", data=dict(data), artifact_file=artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key in tags:
            check_name(key)
        self._append("set_tags", tags={k: str(v) for k, v in tags.items()})

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        check_artifact_path(artifact_path)
        check_local_file(local_path)
        self._append("log_artifact", file=self._keep(Path(local_path)), artifact_path=artifact_path)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        check_artifact_path(artifact_path)
        check_local_dir(local_dir)
        self._append("log_artifacts", file=self._keep(Path(local_dir)), artifact_path=artifact_path)

    def register_model(
        self,
        name: str,
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str:
        check_registration(name, artifact_path, tags)
        self._append("register_model", name=name, artifact_path=artifact_path,
                     tags=dict(tags or {}), description=description)  # fmt: skip
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
    try:
        with mlflow.start_run(start["run_name"], tags=start["tags"],
                              run_id=start.get("resume_run_id")) as run:  # fmt: skip
            run_id = run.run_id
            run.set_tags({"rar.tracking_journal": folder.name})
            for call in rest:
                _apply(run, call, folder)
            if status != "FINISHED":
                raise _Failed(status)
    except _Failed:
        pass
    folder.rename(folder.with_name(folder.name + SYNCED))
    return run_id


def _apply(run: Any, call: dict[str, Any], folder: Path) -> None:
    kind = call["call"]
    if kind == "log_params":
        run.log_params(call["params"])
    elif kind == "log_metrics":
        run.log_metrics(call["metrics"], step=call["step"])
    elif kind == "log_dict":
        run.log_dict(call["data"], call["artifact_file"])
    elif kind == "set_tags":
        run.set_tags(call["tags"])
    elif kind == "log_artifact":
        run.log_artifact(folder / call["file"], call["artifact_path"])
    elif kind == "log_artifacts":
        run.log_artifacts(folder / call["file"], call["artifact_path"])
    elif kind == "register_model":
        run.register_model(call["name"], call["artifact_path"], call["tags"],
                           call["description"])  # fmt: skip
