"""`FakeMlflow`: an in-memory recorder with `MlflowResource`'s interface, for tests.

It refuses what real MLflow refuses (the same naming rules, from `mlflow.py`), so code
tested against it cannot log what the real store would reject.
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
from pydantic import PrivateAttr

from rar_pipeline.core.files import file_hash
from rar_pipeline.defs.resources.tracking_rules import (
    RunLogger,
    artifact_join,
    check_artifact_path,
    check_local_dir,
    check_local_file,
    check_name,
    check_registration,
)


@dataclass
class RecordedModelVersion:
    """One version of a registered model, as `FakeMlflow` recorded it."""

    name: str
    version: str
    source: str  # `runs:/<run_id>/<artifact_path>`
    run_id: str
    artifact_path: str
    tags: dict[str, str]
    description: str | None
    # What was registered: path relative to `artifact_path` -> sha256 of the contents.
    files: dict[str, str]


@dataclass
class RecordedRun:
    """What `FakeMlflow` recorded for one run."""

    run_id: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # log_dict: file -> content
    files: dict[str, str] = field(default_factory=dict)  # log_artifact(s): path -> sha256
    status: str = "RUNNING"
    run_url: str | None = None
    journal: Any = None  # the fake store is always reachable
    # The owning FakeMlflow's registry (shared by its runs).
    registry: dict[str, list[RecordedModelVersion]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            check_name(key)
            if key in self.params and str(self.params[key]) != str(value):
                raise ValueError(
                    f"Changing param values is not allowed: {key!r} is {self.params[key]!r}, "
                    f"got {value!r}"
                )
            self.params[key] = value

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            check_name(key)
            self.metrics.setdefault(key, []).append((step or 0, float(value)))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.artifacts[artifact_file] = dict(data)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key in tags:
            check_name(key)  # all checked before any is set, like MLflow's batch
        self.tags.update({key: str(value) for key, value in tags.items()})

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        check_artifact_path(artifact_path)
        check_local_file(local_path)
        self.files[artifact_join(artifact_path, Path(local_path).name)] = file_hash(
            Path(local_path)
        )

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        check_artifact_path(artifact_path)
        check_local_dir(local_dir)
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                relative = path.relative_to(local_dir).as_posix()
                self.files[artifact_join(artifact_path, relative)] = file_hash(path)

    def register_model(
        self,
        name: str,
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str:
        check_registration(name, artifact_path, tags)
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
        versions = self.registry.setdefault(name, [])
        versions.append(
            RecordedModelVersion(
                name=name,
                version=str(len(versions) + 1),
                source=f"runs:/{self.run_id}/{artifact_path}",
                run_id=self.run_id,
                artifact_path=artifact_path,
                tags={key: str(value) for key, value in (tags or {}).items()},
                description=description,
                files=files,
            )
        )
        return versions[-1].version


class FakeMlflow(dg.ConfigurableResource):
    """In-memory recorder with `MlflowResource`'s interface, for tests."""

    # If set, runs get a (fake) `run_url` under it, so code that surfaces links is exercised;
    # otherwise `run_url` is None, as for a tracking store with no known UI.
    ui_url: str | None = None

    _runs: list[RecordedRun] = PrivateAttr(default_factory=list)
    _registry: dict[str, list[RecordedModelVersion]] = PrivateAttr(default_factory=dict)

    @property
    def runs(self) -> list[RecordedRun]:
        return self._runs

    @property
    def registry(self) -> dict[str, list[RecordedModelVersion]]:
        """Registered model name -> its versions, oldest first."""
        return self._registry

    @contextlib.contextmanager
    def start_run(
        self,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        *,
        run_id: str | None = None,
    ) -> Iterator[RunLogger]:
        for key in tags or {}:
            check_name(key)
        if run_id is None:
            new_id = uuid.uuid4().hex
            run = RecordedRun(
                run_id=new_id,
                run_name=run_name,
                tags={key: str(value) for key, value in (tags or {}).items()},
                run_url=f"{self.ui_url.rstrip('/')}/#/experiments/0/runs/{new_id}"
                if self.ui_url
                else None,
                registry=self._registry,
            )
            self._runs.append(run)
        else:
            found = [r for r in self._runs if r.run_id == run_id]
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
            run.status = "FAILED"
            raise
        run.status = "FINISHED"
