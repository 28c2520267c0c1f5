"""What every tracker shares: the `RunLogger` base and MLflow's naming rules.

The real client (`mlflow.py`), the offline journal (`tracking_journal.py`) and the tests'
in-memory fake (`tests/fake_mlflow.py`) are `RunLogger`s: its public methods apply MLflow's
rules once, here, and hand the checked call to the implementation's `_` method, so what one
accepts the others accept.
"""

from __future__ import annotations

import abc
import json
import posixpath
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_pipeline.core.files import file_hash

if TYPE_CHECKING:
    import pandas as pd

# The UI mode MLflow 3 opens an experiment in. MLflow 3.17's UI takes it from its
# "GenAI / Model training" switch: the page's `workflowType` query parameter, else the
# browser's last choice (localStorage `mlflow.workflowType_v1`, "genai" on a fresh browser).
# Links the pipeline hands out carry the parameter; the experiment also gets the kind tag
# the UI's experiment-type selector writes (read by UIs without the switch).
WORKFLOW_QUERY = "workflowType=machine_learning"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The context tag `mlflow.log_input` gives a dataset (`mlflow.utils.mlflow_tags`).
DATASET_CONTEXT_TAG = "mlflow.data.context"
MODEL_STATUSES = ("READY", "FAILED")


def ui_link(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """An MLflow UI page in its model-training mode: an experiment's runs, or one run."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/{page}?{WORKFLOW_QUERY}"


@dataclass(frozen=True)
class TrackedDataset:
    """A dataset a run read, with the fields MLflow records (`mlflow.entities.Dataset`).

    Plain strings, so that the journal can write it and replay it.
    """

    name: str
    digest: str
    source: str  # the local path or URI it was read from
    schema: str | None = None  # MLflow's column spec: {"mlflow_colspec": [...]}
    profile: str | None = None  # {"num_rows": ..., "num_elements": ...}
    source_type: str = "local"

    def to_mlflow(self, context: str | None) -> Any:
        """The `mlflow.entities.DatasetInput` `mlflow.log_input(dataset, context)` logs."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(self.name, self.digest, self.source_type,
                          json.dumps({"uri": self.source}), self.schema, self.profile)  # fmt: skip
        tags = [InputTag(DATASET_CONTEXT_TAG, context)] if context else []
        return DatasetInput(dataset, tags)


@dataclass(frozen=True)
class Registration:
    """A `register_model` call, checked: what a `RunLogger` implementation registers."""

    name: str
    artifact_path: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    model_id: str | None = None


SCHEMA_SAMPLE = 1000  # rows MLflow's schema inference reads (it is slow on millions)


def frame_dataset(frame: pd.DataFrame, name: str, path: Path) -> TrackedDataset:
    """The dataset of the rows `frame` read from the file at `path`.

    Digest: the file's sha256 (MLflow's own hashes every cell); schema: MLflow's inference
    on a sample, each column required unless it holds a null anywhere; profile: the counts.
    """
    from mlflow.models import infer_signature

    with warnings.catch_warnings():  # its hints are about serving models, not datasets
        warnings.simplefilter("ignore")
        columns = infer_signature(frame.head(SCHEMA_SAMPLE)).inputs.to_dict()
    nullable = {str(c) for c in frame.columns[frame.isna().any()]}
    for column in columns:
        column["required"] = column.get("name") not in nullable
    return TrackedDataset(
        name=name,
        digest=file_hash(Path(path))[:16],
        source=str(path),
        schema=json.dumps({"mlflow_colspec": columns}),
        profile=json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)}),
    )


class RunLogger(abc.ABC):
    """What the pipeline logs to one tracked run.

    The public methods check what MLflow would refuse (raising `ValueError`, or
    `FileNotFoundError` / `NotADirectoryError` for missing local files) before anything is
    written, then call the implementation's method of the same name with a `_` in front.
    """

    run_id: str
    # A link a person can open to see the run, or None where none is known.
    run_url: str | None = None
    # The local journal (`tracking_journal.JournalRun`) the run went to because MLflow
    # could not be reached, or None: what to sync later.
    journal: Any = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key in params:
            check_name(key)
        self._log_params(dict(params))

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, *, model_id: str | None = None
    ) -> None:
        """Metrics at `step` (0 when None); with `model_id`, also the logged model's."""
        for key in metrics:
            check_name(key)
        self._log_metrics({k: float(v) for k, v in metrics.items()}, step or 0, model_id)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._log_dict(dict(data), artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags: all are checked before any is set (MLflow's batch is all or nothing)."""
        for key in tags:
            check_name(key)
        if tags:
            self._set_tags({key: str(value) for key, value in tags.items()})

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        """Upload one file, as `<artifact_path>/<its name>` (or `<its name>` at the root)."""
        check_artifact_path(artifact_path)
        check_local_file(local_path)
        self._log_artifact(Path(local_path), artifact_path)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Upload the files under a folder (not the folder itself) to `artifact_path`."""
        check_artifact_path(artifact_path)
        check_local_dir(local_dir)
        self._log_artifacts(Path(local_dir), artifact_path)

    def log_input(
        self,
        dataset: TrackedDataset | None = None,
        context: str | None = None,
        *,
        model_id: str | None = None,
    ) -> None:
        """What the run read, as `mlflow.log_input`: a dataset and/or a logged model.

        `context` says what the dataset was for ("training"); a model is, e.g., the one an
        evaluation evaluated. A model the store does not hold (one tracked in a journal not
        synced yet) is not linked: a warning says so.
        """
        if dataset is None and model_id is None:
            raise ValueError("log_input needs a dataset or a model_id")
        if dataset is not None:
            check_dataset(dataset, context)
        self._log_input(dataset, context, model_id)

    def create_logged_model(
        self, name: str, params: Mapping[str, Any] | None = None, model_type: str | None = None
    ) -> str:
        """A logged model (MLflow 3's `LoggedModel`) this run outputs; returns its id.

        It is PENDING until `finalize_logged_model`; a run that fails leaves it FAILED.
        """
        check_logged_model_name(name)
        for key in params or {}:
            check_name(key)
        params = {key: str(value) for key, value in (params or {}).items()}
        return self._create_logged_model(name, params, model_type)

    def log_model_artifacts(self, model_id: str, local_dir: Path) -> None:
        """Upload the files under a folder as the logged model's artifacts."""
        check_local_dir(local_dir)
        self._log_model_artifacts(model_id, Path(local_dir))

    def finalize_logged_model(self, model_id: str, status: str = "READY") -> None:
        if status not in MODEL_STATUSES:
            raise ValueError(f"A logged model ends {' or '.join(MODEL_STATUSES)}, not {status!r}")
        self._finalize_logged_model(model_id, status)

    def register_model(
        self,
        name: str,
        artifact_path: str | None = None,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
        *,
        model_id: str | None = None,
    ) -> str:
        """Register a new version of `name`, linked to this run.

        What it holds: the logged model `model_id` (the version is linked to it too), or this
        run's artifacts under `artifact_path`. Creates the registered model if needed;
        returns the new version number ("1", "2", ...).
        """
        check_registration(name, artifact_path, tags, model_id)
        tags = {key: str(value) for key, value in (tags or {}).items()}
        return self._register_model(Registration(name, artifact_path, tags, description, model_id))

    @abc.abstractmethod
    def _log_params(self, params: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _log_metrics(self, metrics: dict[str, float], step: int, model_id: str | None) -> None: ...

    @abc.abstractmethod
    def _log_dict(self, data: dict[str, Any], artifact_file: str) -> None: ...

    @abc.abstractmethod
    def _set_tags(self, tags: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def _log_artifact(self, local_path: Path, artifact_path: str | None) -> None: ...

    @abc.abstractmethod
    def _log_artifacts(self, local_dir: Path, artifact_path: str | None) -> None: ...

    @abc.abstractmethod
    def _log_input(
        self, dataset: TrackedDataset | None, context: str | None, model_id: str | None
    ) -> None: ...

    @abc.abstractmethod
    def _create_logged_model(
        self, name: str, params: dict[str, str], model_type: str | None
    ) -> str: ...

    @abc.abstractmethod
    def _log_model_artifacts(self, model_id: str, local_dir: Path) -> None: ...

    @abc.abstractmethod
    def _finalize_logged_model(self, model_id: str, status: str) -> None: ...

    @abc.abstractmethod
    def _register_model(self, registration: Registration) -> str: ...


# ---------------------------------------------------------------------------
# MLflow's naming rules, enforced by every `RunLogger` (the fake so that code tested
# against it cannot log what real MLflow refuses; the journal so that what it keeps will
# replay; the real one up front so that a bad name fails with the same `ValueError` before
# anything is half-written).


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


def check_registration(
    name: str, artifact_path: str | None, tags: Mapping[str, str] | None, model_id: str | None
) -> None:
    """What `register_model` refuses before anything is written, real or fake alike."""
    check_model_name(name)
    if bool(artifact_path) == bool(model_id):
        raise ValueError(
            "register_model needs what to register: a logged model's id or an artifact path "
            "of the run (one of them)"
        )
    check_artifact_path(artifact_path)
    for key in tags or {}:
        check_name(key)


def check_logged_model_name(name: str) -> None:
    """A logged model name MLflow accepts (its `_validate_logged_model_name`)."""
    from mlflow.utils.validation import _validate_logged_model_name

    mlflow_rule(_validate_logged_model_name, name, prefix="Invalid logged model name: ")


def logged_model_name(raw: str) -> str:
    """A logged model name derived from `raw`: the characters MLflow refuses become '-'."""
    name = re.sub(r"[/:.%\"']+", "-", raw).strip().strip("-")
    check_logged_model_name(name)
    return name


def check_dataset(dataset: TrackedDataset, context: str | None) -> None:
    """A dataset input MLflow accepts: its fields' and its context tag's sizes."""
    from mlflow.utils.validation import _validate_dataset_inputs

    mlflow_rule(_validate_dataset_inputs, [dataset.to_mlflow(context)],
                prefix=f"Invalid dataset {dataset.name!r}: ")  # fmt: skip


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


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the tracking store could not be reached (not that a call was wrong).

    Connection and timeout errors, a database that cannot be opened, or MLflow's wrapper
    around a REST request that failed after its retries, anywhere in the cause chain.
    """
    names = {"ConnectionError", "Timeout", "MaxRetryError", "NewConnectionError",
             "OperationalError", "ReadTimeout", "ConnectTimeout"}  # fmt: skip
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError | TimeoutError) or type(seen).__name__ in names:
            return True
        if "API request to" in str(seen) and "failed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
