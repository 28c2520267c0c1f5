"""`MlflowResource`: run tracking in real MLflow, in a local journal while it is unreachable.

`MlflowResource` uses a local sqlite store by default. The `RunLogger` protocol and the
naming rules every tracker applies are in `tracking_rules.py`; the in-memory `FakeMlflow`
in `fake_mlflow.py`; the journal in `tracking_journal.py`.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg

from rar_pipeline.defs.resources.tracking_journal import JournalRun
from rar_pipeline.defs.resources.tracking_rules import (
    RunLogger,
    check_artifact_path,
    check_local_dir,
    check_local_file,
    check_name,
    check_registration,
)

# ---------------------------------------------------------------------------
# real MLflow


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


METRIC_BATCH = 500  # metrics per log_batch request (MLflow takes at most 1000)


class _MlflowRun:
    """A run in MLflow that moves to a local journal if the store stops answering."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        artifact_uri: str,
        run_url: str | None,
        open_journal: Any = None,
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.run_url = run_url
        self._artifact_uri = artifact_uri
        self._open_journal = open_journal  # reason -> JournalRun; None: never journal
        self.journal: Any = None  # the JournalRun the rest of the run went to, if any
        self._metrics: list[tuple[str, float, int, int]] = []  # (key, value, step, ms)

    def _call(self, name: str, direct: Any, *args: Any, **kwargs: Any) -> Any:
        """`direct()` against MLflow; once MLflow is unreachable, the journal instead.

        Buffered metrics go first, so that calls reach the store in the order made.
        """
        if name != "log_metric_batch":
            self._flush_metrics()
        if self.journal is None:
            try:
                return direct()
            except Exception as exc:
                if self._open_journal is None or not unreachable(exc):
                    raise
                self.journal = self._open_journal(f"{type(exc).__name__}: {exc}"[:500])
        return getattr(self.journal, name)(*args, **kwargs)

    def log_params(self, params: Mapping[str, Any]) -> None:
        def direct() -> None:
            for key, value in params.items():
                self._client.log_param(self.run_id, key, value)

        self._call("log_params", direct, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffer metrics; they go `METRIC_BATCH` to a request, and before any other call.

        One request per metric would cost a store round trip for every training step.
        """
        stamp = int(time.time() * 1000)
        for key, value in metrics.items():
            check_name(key)
            self._metrics.append((key, float(value), step or 0, stamp))
        if len(self._metrics) >= METRIC_BATCH:
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        if not self._metrics:
            return
        batch, self._metrics = self._metrics, []

        def direct() -> None:
            from mlflow.entities import Metric

            metrics = [Metric(k, v, stamp, step) for k, v, step, stamp in batch]
            self._client.log_batch(self.run_id, metrics=metrics)

        self._call("log_metric_batch", direct, batch)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        def direct() -> None:
            self._client.log_dict(self.run_id, dict(data), artifact_file)

        self._call("log_dict", direct, data, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            # One batch: MLflow validates every tag before writing any.
            batch = [RunTag(key, str(value)) for key, value in tags.items()]
            self._call("set_tags", lambda: self._client.log_batch(self.run_id, tags=batch), tags)

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        check_artifact_path(artifact_path)
        check_local_file(local_path)
        self._call("log_artifact", lambda: self._client.log_artifact(
            self.run_id, str(local_path), artifact_path), local_path, artifact_path)  # fmt: skip

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        check_artifact_path(artifact_path)
        check_local_dir(local_dir)
        self._call("log_artifacts", lambda: self._client.log_artifacts(
            self.run_id, str(local_dir), artifact_path), local_dir, artifact_path)  # fmt: skip

    def _has_artifact(self, artifact_path: str) -> bool:
        if self._client.list_artifacts(self.run_id, artifact_path):
            return True  # a non-empty folder
        parent = posixpath.dirname(artifact_path) or None
        return any(
            info.path == artifact_path and not info.is_dir
            for info in self._client.list_artifacts(self.run_id, parent)
        )

    def register_model(
        self,
        name: str,
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str:
        check_registration(name, artifact_path, tags)
        return self._call(
            "register_model", lambda: self._register(name, artifact_path, tags, description),
            name, artifact_path, tags, description,
        )  # fmt: skip

    def _register(
        self, name: str, artifact_path: str, tags: Mapping[str, str] | None, description: str | None
    ) -> str:
        from mlflow.exceptions import MlflowException

        if not self._has_artifact(artifact_path):
            raise ValueError(
                f"Run {self.run_id} has no artifacts under {artifact_path!r} to register"
            )
        try:
            self._client.create_registered_model(name)
        except MlflowException as exc:
            # Exists already, perhaps created a moment ago by a concurrent step.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # The run's own artifact location, not a `runs:/` URI: the sqlite/file registry keeps
        # it as the version's storage location as is, and a tracking server accepts a source
        # inside the run's artifact root when the run_id is given.
        version = self._client.create_model_version(
            name,
            source=f"{self._artifact_uri.rstrip('/')}/{artifact_path}",
            run_id=self.run_id,
            tags={key: str(value) for key, value in (tags or {}).items()},
            run_link=self.run_url,
            description=description,
        )
        return str(version.version)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking. Defaults to a local sqlite store and artifact folder in the project.

    Uses an explicit `MlflowClient` (no global active run), so concurrent Dagster steps in
    one process cannot log into each other's runs.
    """

    tracking_uri: str
    artifact_location: str
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
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = self.artifact_location
        if "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).resolve().as_uri()
        return client.create_experiment(self.experiment, artifact_location=location)

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        """The UI page of a run: on the tracking server, or on `ui_url` for a local store."""
        scheme = urlparse(self.tracking_uri).scheme.lower()
        if scheme in ("http", "https"):
            base = self.tracking_uri
        elif self.tracking_uri.lower().startswith("databricks"):
            return None  # its UI has other addresses
        else:  # sqlite, another database, or a file store: what `mlflow ui` serves
            base = self.ui_url
        if not base:
            return None
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

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
            self._end(client, logger, "FAILED")
            raise
        self._end(client, logger, "FINISHED")

    @staticmethod
    def _end(client: Any, logger: _MlflowRun, status: str) -> None:
        """Mark the run ended: in MLflow, or in the journal the run moved to."""
        logger._call("end", lambda: client.set_terminated(logger.run_id, status=status), status)
