"""`FakeMlflow`: an in-memory recorder with `MlflowResource`'s interface, for tests.

Its runs are `RunLogger`s, so they refuse what real MLflow refuses (the same rules, from
`tracking_rules.py`): code tested against it cannot log what the real store would reject.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from rar_pipeline.core.files import file_hash
from rar_pipeline.defs.resources.tracking_rules import (
    Registration,
    RunLogger,
    TrackedDataset,
    artifact_join,
    ui_link,
)


def _hash_files(local_dir: Path, prefix: str | None = None) -> dict[str, str]:
    """path under `prefix` (posix) -> sha256, for every file under a folder."""
    return {
        artifact_join(prefix, path.relative_to(local_dir).as_posix()): file_hash(path)
        for path in sorted(Path(local_dir).rglob("*"))
        if path.is_file()
    }


@dataclass
class RecordedModel:
    """A logged model (MLflow 3's `LoggedModel`), as `FakeMlflow` recorded it."""

    model_id: str
    name: str
    source_run_id: str
    params: dict[str, str]
    model_type: str | None
    status: str = "PENDING"
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    versions: list[tuple[str, str]] = field(default_factory=list)  # (registered name, version)


@dataclass
class RecordedModelVersion:
    """One version of a registered model, as `FakeMlflow` recorded it."""

    name: str
    version: str
    source: str  # `runs:/<run_id>/<artifact_path>` or `models:/<model_id>`
    run_id: str
    artifact_path: str | None
    tags: dict[str, str]
    description: str | None
    # What was registered: path relative to `artifact_path` -> sha256 of the contents.
    files: dict[str, str]
    model_id: str | None = None  # the logged model it holds, if it was registered from one


@dataclass
class RecordedRun(RunLogger):
    """What `FakeMlflow` recorded for one run."""

    run_id: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # log_dict: file -> content
    files: dict[str, str] = field(default_factory=dict)  # log_artifact(s): path -> sha256
    datasets: list[tuple[TrackedDataset, str | None]] = field(default_factory=list)  # +context
    model_inputs: list[str] = field(default_factory=list)  # ids of the models it read
    model_outputs: list[str] = field(default_factory=list)  # ids of the models it created
    status: str = "RUNNING"
    run_url: str | None = None
    journal: Any = None  # the fake store is always reachable
    # The owning FakeMlflow's registry and logged models (shared by its runs).
    registry: dict[str, list[RecordedModelVersion]] = field(
        default_factory=dict, repr=False, compare=False
    )
    models: dict[str, RecordedModel] = field(default_factory=dict, repr=False, compare=False)

    def _log_params(self, params: dict[str, Any]) -> None:
        for key, value in params.items():
            if key in self.params and str(self.params[key]) != str(value):
                raise ValueError(
                    f"Changing param values is not allowed: {key!r} is {self.params[key]!r}, "
                    f"got {value!r}"
                )
        self.params.update(params)

    def _log_metrics(self, metrics: dict[str, float], step: int, model_id: str | None) -> None:
        model = self.models.get(model_id or "")
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, value))
            if model is not None:  # like MLflow: a model it does not hold is not linked
                model.metrics.setdefault(key, []).append((step, value))

    def _log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.artifacts[artifact_file] = data

    def _set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def _log_artifact(self, local_path: Path, artifact_path: str | None) -> None:
        self.files[artifact_join(artifact_path, local_path.name)] = file_hash(local_path)

    def _log_artifacts(self, local_dir: Path, artifact_path: str | None) -> None:
        self.files.update(_hash_files(local_dir, artifact_path))

    def _log_input(
        self, dataset: TrackedDataset | None, context: str | None, model_id: str | None
    ) -> None:
        if dataset is not None:
            self.datasets.append((dataset, context))
        if model_id in self.models:
            self.model_inputs.append(model_id)

    def _create_logged_model(
        self, name: str, params: dict[str, str], model_type: str | None
    ) -> str:
        model_id = f"m-{uuid.uuid4().hex}"
        self.models[model_id] = RecordedModel(model_id, name, self.run_id, params, model_type)
        self.model_outputs.append(model_id)
        return model_id

    def _model(self, model_id: str) -> RecordedModel:
        if model_id not in self.models:
            raise LookupError(f"Logged model with id={model_id} not found")
        return self.models[model_id]

    def _log_model_artifacts(self, model_id: str, local_dir: Path) -> None:
        self._model(model_id).files.update(_hash_files(local_dir))

    def _finalize_logged_model(self, model_id: str, status: str) -> None:
        self._model(model_id).status = status

    def _register_model(self, registration: Registration) -> str:
        name, artifact_path, model_id = (
            registration.name, registration.artifact_path, registration.model_id
        )  # fmt: skip
        if model_id is not None:
            files, source = dict(self._model(model_id).files), f"models:/{model_id}"
        else:
            files = self._registered_files(artifact_path)
            source = f"runs:/{self.run_id}/{artifact_path}"
        versions = self.registry.setdefault(name, [])
        version = str(len(versions) + 1)
        versions.append(
            RecordedModelVersion(name, version, source, self.run_id, artifact_path,
                                 registration.tags, registration.description, files, model_id)
        )  # fmt: skip
        if model_id is not None:
            self.models[model_id].versions.append((name, version))
        return version

    def _registered_files(self, artifact_path: str) -> dict[str, str]:
        """The run's files under `artifact_path` (a folder, or a single file)."""
        prefix = artifact_path + "/"
        files = {
            path.removeprefix(prefix): digest
            for path, digest in self.files.items()
            if path.startswith(prefix)
        }
        if artifact_path in self.files:  # a single file
            files = {posixpath.basename(artifact_path): self.files[artifact_path]}
        if not files and not any(
            path == artifact_path or path.startswith(prefix) for path in self.artifacts
        ):
            raise ValueError(
                f"Run {self.run_id} has no artifacts under {artifact_path!r} to register"
            )
        return files

    def end(self, status: str) -> None:
        """Like MLflow's: a failed run's models that were never finalized end FAILED."""
        if status != "FINISHED":
            for model_id in self.model_outputs:
                if self.models[model_id].status == "PENDING":
                    self.models[model_id].status = "FAILED"
        self.status = status


@dataclass
class _Recorded:
    """What one `FakeMlflow` (and every copy Dagster makes of it) recorded."""

    runs: list[RecordedRun] = field(default_factory=list)
    registry: dict[str, list[RecordedModelVersion]] = field(default_factory=dict)
    models: dict[str, RecordedModel] = field(default_factory=dict)


_RECORDED: dict[str, _Recorded] = {}  # FakeMlflow.store -> what it recorded


class FakeMlflow(dg.ConfigurableResource):
    """In-memory recorder with `MlflowResource`'s interface, for tests.

    Dagster hands each step a copy of a resource, made from its config: the recordings live
    under `store`, which the copies share, so a test reads what the graph's steps logged
    (steps run in this process).
    """

    # If set, runs get a (fake) `run_url` under it, so code that surfaces links is exercised;
    # otherwise `run_url` is None, as for a tracking store with no known UI.
    ui_url: str | None = None
    store: str = Field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def _recorded(self) -> _Recorded:
        return _RECORDED.setdefault(self.store, _Recorded())

    @property
    def runs(self) -> list[RecordedRun]:
        return self._recorded.runs

    @property
    def registry(self) -> dict[str, list[RecordedModelVersion]]:
        """Registered model name -> its versions, oldest first."""
        return self._recorded.registry

    @property
    def models(self) -> dict[str, RecordedModel]:
        """Logged model id -> the model, in the order created."""
        return self._recorded.models

    @contextlib.contextmanager
    def start_run(
        self,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        *,
        run_id: str | None = None,
    ) -> Iterator[RunLogger]:
        if run_id is None:
            new_id = uuid.uuid4().hex
            run = RecordedRun(
                run_id=new_id,
                run_name=run_name,
                tags={},
                run_url=ui_link(self.ui_url, "0", new_id) if self.ui_url else None,
                registry=self.registry,
                models=self.models,
            )
            run.set_tags(tags or {})  # checked like any tags
            self.runs.append(run)
        else:
            found = [r for r in self.runs if r.run_id == run_id]
            if not found:
                raise LookupError(f"Run with id={run_id} not found")
            run = found[0]
            if run.run_name != run_name:
                raise ValueError(f"Run {run_id} is named {run.run_name!r}, not {run_name!r}")
            run.status = "RUNNING"
            run.set_tags(tags or {})
        try:
            yield run
        except BaseException:
            run.end("FAILED")
            raise
        run.end("FINISHED")
