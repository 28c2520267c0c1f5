"""`MlflowResource`: run tracking in real MLflow, in a local journal while it is unreachable.

`MlflowResource` uses a local sqlite store by default. The `RunLogger` base and the
naming rules every tracker applies are in `tracking_rules.py`; the journal in
`tracking_journal.py`; the tests' in-memory `FakeMlflow` in `tests/fake_mlflow.py`.

What a run looks like in MLflow 3: params, metrics, tags and files as before; the data it
read as dataset inputs (`log_input`); a checkpoint as a logged model the run outputs
(`create_logged_model`, `log_model_artifacts`, `finalize_logged_model`), registered as a
model version linked to it; an evaluation's model as a model input. The experiment is tagged
a model-training one and links open the UI in its model-training mode (`WORKFLOW_QUERY`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import posixpath
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg

from rar_pipeline.defs.resources.tracking_journal import JournalRun
from rar_pipeline.defs.resources.tracking_rules import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    Registration,
    RunLogger,
    TrackedDataset,
    ui_link,
    unreachable,
)

METRIC_BATCH = 500  # metrics per log_batch request (MLflow takes at most 1000)


class _MlflowRun(RunLogger):
    """A run in MLflow that moves to a local journal if the store stops answering."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        experiment_id: str,
        artifact_uri: str,
        run_url: str | None,
        open_journal: Any = None,
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.run_url = run_url
        self._experiment_id = experiment_id
        self._artifact_uri = artifact_uri
        self._open_journal = open_journal  # reason -> JournalRun; None: never journal
        self.journal: Any = None  # the JournalRun the rest of the run went to, if any
        # (key, value, step, ms, model_id)
        self._metrics: list[tuple[str, float, int, int, str | None]] = []
        self._pending: set[str] = set()  # logged models created and not finalized
        self._held: dict[str, bool] = {}  # model id -> whether the store holds it

    def _call(self, method: str, direct: Any, /, *args: Any, **kwargs: Any) -> Any:
        """`direct()` against MLflow; once MLflow is unreachable, the journal instead.

        Buffered metrics go first, so that calls reach the store in the order made.
        """
        if method != "log_metric_batch":
            self._flush_metrics()
        if self.journal is None:
            try:
                return direct()
            except Exception as exc:
                if self._open_journal is None or not unreachable(exc):
                    raise
                self.journal = self._open_journal(f"{type(exc).__name__}: {exc}"[:500])
        return getattr(self.journal, method)(*args, **kwargs)

    def _log_params(self, params: dict[str, Any]) -> None:
        def direct() -> None:
            for key, value in params.items():
                self._client.log_param(self.run_id, key, value)

        self._call("log_params", direct, params)

    def _log_metrics(self, metrics: dict[str, float], step: int, model_id: str | None) -> None:
        """Buffer metrics; they go `METRIC_BATCH` to a request, and before any other call.

        One request per metric would cost a store round trip for every training step.
        """
        stamp = int(time.time() * 1000)
        model_id = self._linkable(model_id)
        self._metrics.extend((key, value, step, stamp, model_id) for key, value in metrics.items())
        if len(self._metrics) >= METRIC_BATCH:
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        if not self._metrics:
            return
        batch, self._metrics = self._metrics, []

        def direct() -> None:
            from mlflow.entities import Metric

            metrics = [Metric(k, v, ms, step, model_id=m) for k, v, step, ms, m in batch]
            self._client.log_batch(self.run_id, metrics=metrics)

        self._call("log_metric_batch", direct, batch)

    def _log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        def direct() -> None:
            self._client.log_dict(self.run_id, data, artifact_file)

        self._call("log_dict", direct, data, artifact_file)

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        # One batch: MLflow validates every tag before writing any.
        batch = [RunTag(key, value) for key, value in tags.items()]
        self._call("set_tags", lambda: self._client.log_batch(self.run_id, tags=batch), tags)

    def _log_artifact(self, local_path: Path, artifact_path: str | None) -> None:
        self._call("log_artifact", lambda: self._client.log_artifact(
            self.run_id, str(local_path), artifact_path), local_path, artifact_path)  # fmt: skip

    def _log_artifacts(self, local_dir: Path, artifact_path: str | None) -> None:
        self._call("log_artifacts", lambda: self._client.log_artifacts(
            self.run_id, str(local_dir), artifact_path), local_dir, artifact_path)  # fmt: skip

    def _linkable(self, model_id: str | None) -> str | None:
        """`model_id` if the store holds that logged model (else None, with a warning).

        MLflow would store a link to a model it does not hold as is, and refuse its metrics.
        """
        if model_id is None:
            return None
        if model_id not in self._held:
            held = self._call("has_model", lambda: self._has_model(model_id), model_id)
            if not held:
                dg.get_dagster_logger().warning(
                    f"MLflow holds no logged model {model_id} (tracked in a journal not "
                    f"synced, or in another store): run {self.run_id} is not linked to it"
                )
            self._held[model_id] = held
        return model_id if self._held[model_id] else None

    def _has_model(self, model_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_logged_model(model_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False
        return True

    def _log_input(
        self, dataset: TrackedDataset | None, context: str | None, model_id: str | None
    ) -> None:
        model_id = self._linkable(model_id)
        if dataset is None and model_id is None:
            return

        def direct() -> None:
            from mlflow.entities import LoggedModelInput

            self._client.log_inputs(
                self.run_id,
                datasets=[dataset.to_mlflow(context)] if dataset is not None else None,
                models=[LoggedModelInput(model_id)] if model_id is not None else None,
            )

        self._call("log_input", direct, dataset, context, model_id=model_id)

    def _create_logged_model(
        self, name: str, params: dict[str, str], model_type: str | None
    ) -> str:
        def direct() -> str:
            from mlflow.entities import LoggedModelOutput

            model = self._client.create_logged_model(
                self._experiment_id, name=name, source_run_id=self.run_id, params=params,
                model_type=model_type,
            )  # fmt: skip
            # what `mlflow.<flavor>.log_model` does: the model is the run's output
            self._client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
            return model.model_id

        model_id = self._call("create_logged_model", direct, name, params, model_type)
        self._pending.add(model_id)
        self._held[model_id] = True
        return model_id

    def _log_model_artifacts(self, model_id: str, local_dir: Path) -> None:
        self._call("log_model_artifacts", lambda: self._client.log_model_artifacts(
            model_id, str(local_dir)), model_id, local_dir)  # fmt: skip

    def _finalize_logged_model(self, model_id: str, status: str) -> None:
        self._call("finalize_logged_model", lambda: self._client.finalize_logged_model(
            model_id, status), model_id, status)  # fmt: skip
        self._pending.discard(model_id)

    def _has_artifact(self, artifact_path: str) -> bool:
        if self._client.list_artifacts(self.run_id, artifact_path):
            return True  # a non-empty folder
        parent = posixpath.dirname(artifact_path) or None
        return any(
            info.path == artifact_path and not info.is_dir
            for info in self._client.list_artifacts(self.run_id, parent)
        )

    def _register_model(self, registration: Registration) -> str:
        return self._call("register_model", lambda: self._register(registration),
                          **dataclasses.asdict(registration))  # fmt: skip

    def _register(self, registration: Registration) -> str:
        from mlflow.exceptions import MlflowException

        name, artifact_path, model_id = (
            registration.name, registration.artifact_path, registration.model_id
        )  # fmt: skip
        if model_id is not None:
            # A logged model's version: its artifact location as the source (`models:/<id>`
            # would be resolved by a client on the default tracking URI, not this one), the
            # model_id (kept by a tracking server's registry; MLflow 3.17's sqlite registry
            # drops it), and the model's `mlflow.modelVersions` tag (`_note_version`).
            source = self._client.get_logged_model(model_id).artifact_location
        elif self._has_artifact(artifact_path):
            # The run's own artifact location, not a `runs:/` URI: the sqlite/file registry
            # keeps it as the version's storage location as is, and a tracking server accepts
            # a source inside the run's artifact root when the run_id is given.
            source = f"{self._artifact_uri.rstrip('/')}/{artifact_path}"
        else:
            raise ValueError(
                f"Run {self.run_id} has no artifacts under {artifact_path!r} to register"
            )
        try:
            self._client.create_registered_model(name)
        except MlflowException as exc:
            # Exists already, perhaps created a moment ago by a concurrent step.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self._client.create_model_version(
            name, source=source, run_id=self.run_id, tags=registration.tags,
            run_link=self.run_url, description=registration.description, model_id=model_id,
        )  # fmt: skip
        if model_id is not None:
            self._note_version(model_id, name, str(version.version))
        return str(version.version)

    def _note_version(self, model_id: str, name: str, version: str) -> None:
        """Add the version to the logged model's `mlflow.modelVersions` tag.

        The UI lists a model's versions from it; `mlflow.register_model` keeps it so too.
        """
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        tags = self._client.get_logged_model(model_id).tags
        versions = json.loads(tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
        versions.append({"name": name, "version": version})
        self._client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})

    def end(self, status: str) -> None:
        """Mark the run ended: in MLflow, or in the journal it moved to.

        A failed run's logged models that were never finalized are marked FAILED first.
        """
        if status != "FINISHED":
            for model_id in sorted(self._pending):
                try:
                    self.finalize_logged_model(model_id, "FAILED")
                except Exception as exc:  # the run's own error matters more
                    dg.get_dagster_logger().warning(f"could not mark {model_id} FAILED: {exc}")
        self._call("end", lambda: self._client.set_terminated(self.run_id, status=status), status)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking. Defaults to a local sqlite store and artifact folder in the project.

    Uses an explicit `MlflowClient` (no global active run), so concurrent Dagster steps in
    one process cannot log into each other's runs.
    """

    tracking_uri: str
    # a folder or URI; empty: the tracking server's (proxied: runs need no bucket access)
    artifact_location: str = ""
    experiment: str = "rar_pipeline"
    # Where a run is journaled when the store cannot be reached (empty: fail instead);
    # `rar sync-tracking` replays the journal once the store is back.
    journal_dir: str = ""
    # A tracking server that does not answer its health check within this many seconds
    # counts as unreachable (MLflow's own client would retry for minutes).
    probe_timeout_s: float = 5.0
    # Where `make mlflow-ui` serves a local (sqlite/file) store: the base of `run_url` for
    # such stores. Empty: no link for them.
    ui_url: str = "http://127.0.0.1:5000"

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        # The registry defaults to the tracking URI: models go to the same store.
        return MlflowClient(tracking_uri=self.tracking_uri)

    def _experiment_id(self, client: Any) -> str:
        """The experiment's id; it is created (and an older one tagged) a model-training one."""
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            if EXPERIMENT_KIND_TAG not in found.tags:  # a person's choice in the UI stays
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        location = self.artifact_location or None  # None: the tracking server's own store
        if location and "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).resolve().as_uri()
        return client.create_experiment(self.experiment, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})  # fmt: skip

    def _ui_base(self) -> str | None:
        """The UI's address: the tracking server, or `ui_url` for a local store."""
        scheme = urlparse(self.tracking_uri).scheme.lower()
        if scheme in ("http", "https"):
            return self.tracking_uri
        if self.tracking_uri.lower().startswith("databricks"):
            return None  # its UI has other addresses
        return self.ui_url or None  # sqlite, another database, a file store: `mlflow ui`

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        """The UI page of a run, in the UI's model-training mode (None: no UI known)."""
        base = self._ui_base()
        return ui_link(base, experiment_id, run_id) if base else None

    def experiment_url(self, experiment_id: str) -> str | None:
        """The experiment's runs page, in the UI's model-training mode (None: no UI known)."""
        base = self._ui_base()
        return ui_link(base, experiment_id) if base else None

    def _probe(self) -> None:
        """Raise ConnectionError quickly when a tracking server does not answer."""
        import urllib.error
        import urllib.request

        if urlparse(self.tracking_uri).scheme.lower() not in ("http", "https"):
            return
        try:
            health = f"{self.tracking_uri.rstrip('/')}/health"
            with urllib.request.urlopen(health, timeout=self.probe_timeout_s):
                pass
        except urllib.error.HTTPError:
            return  # it answered
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"MLflow at {self.tracking_uri} does not answer: {exc}") from exc

    def _journal(
        self, run_name: str, tags: Mapping[str, str] | None, reason: str, run_id: str | None
    ) -> Any:
        dg.get_dagster_logger().warning(
            f"MLflow unreachable ({reason}); tracking {run_name!r} in {self.journal_dir}: "
            "run `rar sync-tracking` once it is back"
        )
        return JournalRun(Path(self.journal_dir), run_name, tags, reason, resume_run_id=run_id)

    @contextlib.contextmanager
    def start_run(
        self,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        *,
        run_id: str | None = None,
    ) -> Iterator[RunLogger]:
        """A tracked run; marked FAILED if the body raises, FINISHED otherwise.

        With `run_id`, resumes that run of this experiment instead (e.g. a training resumed
        after a kill): it is marked RUNNING again and `tags` are added to it. Its name must
        be `run_name`. Params already logged cannot change value (MLflow's rule).

        When the store cannot be reached (at the start, or part-way) and `journal_dir` is
        set, the run goes on in a local journal (`tracking_journal`); the logger's
        `journal` attribute then says where.
        """
        try:
            self._probe()
            client = self._client()
            experiment_id = self._experiment_id(client)
        except Exception as exc:
            if not self.journal_dir or not unreachable(exc):
                raise
            journal = self._journal(run_name, tags, f"{type(exc).__name__}: {exc}", run_id)
            try:
                yield journal
            except BaseException:
                journal.end("FAILED")
                raise
            journal.end("FINISHED")
            return
        if run_id is None:
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
        else:
            run = client.get_run(run_id)  # MlflowException if there is no such run
            if run.info.experiment_id != experiment_id:
                raise ValueError(
                    f"Run {run_id} belongs to experiment {run.info.experiment_id}, "
                    f"not {self.experiment!r} ({experiment_id})"
                )
            if run.info.run_name != run_name:
                raise ValueError(f"Run {run_id} is named {run.info.run_name!r}, not {run_name!r}")
            client.update_run(run_id, status="RUNNING")
        opened = run.info.run_id
        logger = _MlflowRun(
            client,
            opened,
            experiment_id,
            artifact_uri=run.info.artifact_uri,
            run_url=self.run_url(experiment_id, opened),
            open_journal=(lambda why: self._journal(run_name, tags, why, opened))
            if self.journal_dir
            else None,
        )
        if run_id is not None and tags:
            logger.set_tags(tags)
        try:
            yield logger
        except BaseException:
            logger.end("FAILED")
            raise
        logger.end("FINISHED")
