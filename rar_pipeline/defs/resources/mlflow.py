"""Run tracking: `MlflowResource` (real MLflow, local sqlite by default) and `FakeMlflow`."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
from pydantic import PrivateAttr


class RunLogger(Protocol):
    """What the pipeline logs to one tracked run."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None: ...


class _MlflowRun:
    def __init__(self, client: Any, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self._client.log_param(self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self._client.log_metric(self.run_id, key, float(value), step=step or 0)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._client.log_dict(self.run_id, dict(data), artifact_file)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking. Defaults to a local sqlite store and artifact folder in the project.

    Uses an explicit `MlflowClient` (no global active run), so concurrent Dagster steps in
    one process cannot log into each other's runs.
    """

    tracking_uri: str
    artifact_location: str
    experiment: str = "rar_pipeline"

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        return MlflowClient(tracking_uri=self.tracking_uri)

    def _experiment_id(self, client: Any) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = self.artifact_location
        if "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).resolve().as_uri()
        return client.create_experiment(self.experiment, artifact_location=location)

    @contextlib.contextmanager
    def start_run(
        self, run_name: str, tags: Mapping[str, str] | None = None
    ) -> Iterator[RunLogger]:
        """A tracked run; marked FAILED if the body raises, FINISHED otherwise."""
        client = self._client()
        run = client.create_run(
            self._experiment_id(client), run_name=run_name, tags=dict(tags or {})
        )
        try:
            yield _MlflowRun(client, run.info.run_id)
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        client.set_terminated(run.info.run_id, status="FINISHED")


# MLflow's rule for param and metric names; the fake enforces it so that code tested against
# the fake cannot log a name (e.g. "recall@10") that real MLflow refuses.
_MLFLOW_NAME = re.compile(r"^[/\w.\- :]+$")


def _check_name(name: str) -> None:
    if not _MLFLOW_NAME.match(name):
        raise ValueError(
            f"Invalid name {name!r}: names may only contain alphanumerics, underscores, "
            "dashes, periods, spaces, colon and slashes"
        )


@dataclass
class RecordedRun:
    """What `FakeMlflow` recorded for one run."""

    run_id: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    status: str = "RUNNING"

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            _check_name(key)
            if key in self.params and str(self.params[key]) != str(value):
                raise ValueError(
                    f"Changing param values is not allowed: {key!r} is {self.params[key]!r}, "
                    f"got {value!r}"
                )
            self.params[key] = value

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            _check_name(key)
            self.metrics.setdefault(key, []).append((step or 0, float(value)))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.artifacts[artifact_file] = dict(data)


class FakeMlflow(dg.ConfigurableResource):
    """In-memory recorder with `MlflowResource`'s interface, for tests."""

    _runs: list[RecordedRun] = PrivateAttr(default_factory=list)

    @property
    def runs(self) -> list[RecordedRun]:
        return self._runs

    @contextlib.contextmanager
    def start_run(
        self, run_name: str, tags: Mapping[str, str] | None = None
    ) -> Iterator[RunLogger]:
        run = RecordedRun(run_id=uuid.uuid4().hex, run_name=run_name, tags=dict(tags or {}))
        self._runs.append(run)
        try:
            yield run
        except BaseException:
            run.status = "FAILED"
            raise
        run.status = "FINISHED"
