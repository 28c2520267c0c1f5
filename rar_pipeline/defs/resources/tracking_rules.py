"""What every tracker shares: the `RunLogger` protocol and MLflow's naming rules.

The real client (`mlflow.py`), the fake (`fake_mlflow.py`) and the offline journal
(`tracking_journal.py`) all apply these rules, so what one accepts the others accept.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class RunLogger(Protocol):
    """What the pipeline logs to one tracked run."""

    run_id: str
    # A link a person can open to see the run, or None where none is known.
    run_url: str | None
    # The local journal (`tracking_journal.JournalRun`) the run went to because MLflow
    # could not be reached, or None: what to sync later.
    journal: Any

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        """Upload one file, as `<artifact_path>/<its name>` (or `<its name>` at the root)."""
        ...

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Upload the files under a folder (not the folder itself) to `artifact_path`."""
        ...

    def register_model(
        self,
        name: str,
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str:
        """Register this run's artifacts under `artifact_path` as a new version of `name`.

        Creates the registered model if needed; returns the new version number ("1", "2", ...).
        """
        ...


# ---------------------------------------------------------------------------
# MLflow's naming rules, enforced by both implementations (the fake so that code tested
# against it cannot log what real MLflow refuses; the real one up front so that a bad name
# fails with the same `ValueError` before anything is half-written).


def mlflow_rule(check: Any, *args: Any, prefix: str = "") -> None:
    """Apply one of MLflow's own validators, raising its message as a ValueError."""
    from mlflow.exceptions import MlflowException

    try:
        check(*args)
    except MlflowException as exc:
        raise ValueError(f"{prefix}{exc.message}") from None


def check_name(name: str) -> None:
    """A param, metric or tag name MLflow accepts (its characters, path and length rules)."""
    from mlflow.utils.validation import (
        MAX_ENTITY_KEY_LENGTH,
        _validate_length_limit,
        _validate_param_name,
    )

    mlflow_rule(_validate_param_name, name, prefix=f"Invalid name {name!r}: ")
    mlflow_rule(_validate_length_limit, "Name", MAX_ENTITY_KEY_LENGTH, name)


def check_artifact_path(artifact_path: str | None) -> None:
    """An artifact folder MLflow accepts: relative, normalised, no trailing slash."""
    from mlflow.utils.validation import path_not_unique

    if artifact_path and path_not_unique(artifact_path):
        raise ValueError(
            f"Invalid artifact path {artifact_path!r}: must be a relative, normalised posix "
            f"path without a trailing slash (e.g. {posixpath.normpath(artifact_path)!r})"
        )


def check_model_name(name: str) -> None:
    """A registered model name MLflow accepts (its `_validate_model_name`)."""
    from mlflow.utils.validation import _validate_model_name

    mlflow_rule(_validate_model_name, name, prefix="Invalid registered model name: ")


def check_registration(name: str, artifact_path: str, tags: Mapping[str, str] | None) -> None:
    """What `register_model` refuses before anything is written, real or fake alike."""
    check_model_name(name)
    if not artifact_path:
        raise ValueError("register_model needs the artifact path of what to register")
    check_artifact_path(artifact_path)
    for key in tags or {}:
        check_name(key)


def registered_model_name(raw: str) -> str:
    """A registered model name derived from `raw`: '/' and ':' become '-'.

    E.g. "sentence-transformers/all-MiniLM-L6-v2" -> "sentence-transformers-all-MiniLM-L6-v2".
    Raises `ValueError` if nothing valid is left.
    """
    name = re.sub(r"[/:]+", "-", raw).strip().strip("-")
    check_model_name(name)
    return name


def check_local_file(local_path: Path) -> None:
    """Raise FileNotFoundError unless `local_path` is a file."""
    if not Path(local_path).is_file():
        raise FileNotFoundError(f"Not a file: {local_path}")


def check_local_dir(local_dir: Path) -> None:
    """Raise NotADirectoryError unless `local_dir` is a folder."""
    if not Path(local_dir).is_dir():
        raise NotADirectoryError(f"Not a folder: {local_dir}")


def artifact_join(artifact_path: str | None, name: str) -> str:
    """An artifact's path: `name` under `artifact_path` (at the root when None)."""
    return f"{artifact_path}/{name}" if artifact_path else name
