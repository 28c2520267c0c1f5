"""One resource per external system, each with a real and a fake implementation.

- `CorpusResource`: the M-BEIR data root (read), the artifacts directory (written) and the
  validation policy. It is a real filesystem in tests too, on temp dirs.
- `LanceDBResource` / `FakeVectorStore`: vector tables; real LanceDB or in-memory numpy.
- `MlflowResource` / `FakeMlflow`: run tracking; real MLflow (local sqlite by default) or an
  in-memory recorder.

`definitions.py` chooses the real ones; tests pass fakes or real ones on temp dirs.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import PrivateAttr

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.ingest import ArtifactLayout
from rar_pipeline.core.corpus.mbeir import CorpusLayout, discover
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.vlm.base import VLM
from rar_pipeline.core.enhance.vlm.factory import create_vlm, default_model_id
from rar_pipeline.core.enhance.vlm.fake import FakeVLM


class CorpusResource(dg.ConfigurableResource):
    """The corpus a run reads, where its outputs go, and how strictly it is validated.

    Attributes:
        data_root: an M-BEIR data root (query/, cand_pool/, qrels/, mbeir_images/...).
        artifacts_dir: where this corpus' Parquet outputs, quarantine files and tables go.
        image_check: how hard validation looks at images: decode | header | exists | off.
        max_pixels: images larger than this are quarantined.
        max_quarantine_rate: the quarantine-rate asset checks warn above this share.
    """

    data_root: str
    artifacts_dir: str
    image_check: str = ImageCheckLevel.DECODE.value
    max_pixels: int = 40_000_000
    max_quarantine_rate: float = 0.05

    def layout(self) -> CorpusLayout:
        return discover(self.data_root)

    def artifacts(self) -> ArtifactLayout:
        return ArtifactLayout(Path(self.artifacts_dir))

    def image_policy(self) -> ImageCheck:
        return ImageCheck(level=ImageCheckLevel(self.image_check), max_pixels=self.max_pixels)


# ---------------------------------------------------------------------------
# vector store


class VectorStore(Protocol):
    """What the pipeline needs from a vector database."""

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int: ...

    def table_names(self) -> list[str]: ...

    def count_rows(self, name: str) -> int: ...

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame: ...


class LanceDBResource(dg.ConfigurableResource):
    """LanceDB tables at `uri`: a local folder by default, or object storage (s3://...).

    Rows need a `vector` column (fixed-size float32) for `search`.
    """

    uri: str

    def connect(self) -> Any:
        import lancedb

        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        return lancedb.connect(self.uri)

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int:
        db = self.connect()
        if mode == "append" and name in self.table_names():
            table = db.open_table(name)
            table.add(frame)
        else:
            table = db.create_table(name, frame, mode="overwrite")
        return table.count_rows()

    def table_names(self) -> list[str]:
        return list(self.connect().list_tables().tables)

    def count_rows(self, name: str) -> int:
        return self.connect().open_table(name).count_rows()

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame:
        table = self.connect().open_table(name)
        hits = table.search(np.asarray(vector, dtype=np.float32)).limit(k).to_pandas()
        return hits.rename(columns={"_distance": "distance"})


class FakeVectorStore(dg.ConfigurableResource):
    """In-memory brute-force stand-in for `LanceDBResource` (L2 distance, like LanceDB)."""

    _tables: dict[str, pd.DataFrame] = PrivateAttr(default_factory=dict)

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int:
        if mode == "append" and name in self._tables:
            frame = pd.concat([self._tables[name], frame], ignore_index=True)
        self._tables[name] = frame.reset_index(drop=True)
        return len(self._tables[name])

    def table_names(self) -> list[str]:
        return sorted(self._tables)

    def count_rows(self, name: str) -> int:
        return len(self._tables[name])

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame:
        table = self._tables[name]
        matrix = np.stack(table["vector"].to_numpy()).astype(np.float32)
        distance = ((matrix - np.asarray(vector, dtype=np.float32)) ** 2).sum(axis=1)
        order = np.argsort(distance, kind="stable")[:k]
        return table.iloc[order].assign(distance=distance[order]).reset_index(drop=True)


# ---------------------------------------------------------------------------
# experiment tracking


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


# ---------------------------------------------------------------------------
# vision-language model


class VLMResource(dg.ConfigurableResource):
    """The VLM that enhances items, and the enhancement policy around it.

    Attributes:
        backend: offline (default here: shipped models + a memory learned from the train
            split) | transformers | openai (any OpenAI-compatible server, e.g. `vllm serve`)
            | vllm (in-process engine on a GPU).
        model_id: the model; empty means the backend's default (Qwen/Qwen2.5-VL-7B-Instruct).
        base_url / api_key_env / max_concurrency / timeout_s: the openai backend's server.
        device / trust_remote_code: the transformers and vllm backends.
        temperature / seed: sampling (0 = greedy, the method's default).
        batch_size: requests per backend call. max_attempts: tries per failed item.
        device_batch_size: transformers only: requests per forward pass.
        max_failure_rate: the failure-rate asset checks warn above this share of items.
        hallucination_policy: keep | strip | drop contradicting entities.
        query_type_overrides: task -> "qa" | "modification", for image+text queries whose
            phrasing the method's text rule routes wrongly.
    """

    backend: str = "offline"
    model_id: str = ""
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout_s: float = 120.0
    device: str = "auto"
    trust_remote_code: bool = False
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 32
    device_batch_size: int = 4
    max_attempts: int = 3
    max_failure_rate: float = 0.02
    hallucination_policy: str = GuardPolicy.KEEP.value
    query_type_overrides: dict[str, str] = {}

    def resolved_model_id(self) -> str:
        return self.model_id or default_model_id(self.backend)

    def version_fields(self) -> list[str]:
        """What shapes every output besides the prompts: part of the code versions."""
        return [
            f"backend={self.backend}",
            f"model={self.resolved_model_id()}",
            f"temperature={self.temperature}",
            f"seed={self.seed}",
        ]

    def policy(self) -> GuardPolicy:
        return GuardPolicy(self.hallucination_policy)

    def create(self, artifacts_dir: Path) -> VLM:
        """Build the backend; the offline one reads its memory from the artifacts dir."""
        return create_vlm(
            self.backend,
            model_id=self.model_id or None,
            memory_dir=artifacts_dir / "offline_captioner",
            perception_cache_dir=artifacts_dir / "cache" / "perception",
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            max_concurrency=self.max_concurrency,
            timeout_s=self.timeout_s,
            device=self.device,
            batch_size=self.device_batch_size,
            trust_remote_code=self.trust_remote_code,
        )


class FakeVLMResource(VLMResource):
    """`VLMResource` whose backend is a `FakeVLM` shared across calls (tests count calls)."""

    backend: str = "fake"
    model_id: str = "fake-vlm"
    fail_first: dict[str, int] = {}
    _vlm: Any = PrivateAttr(default=None)

    def resolved_model_id(self) -> str:
        return self.model_id

    @property
    def fake(self) -> FakeVLM:
        if self._vlm is None:
            self._vlm = FakeVLM(model=self.model_id, fail_first=dict(self.fail_first))
        return self._vlm

    def create(self, artifacts_dir: Path) -> VLM:
        return self.fake


def vlm_from_env(env: Mapping[str, str] | None = None) -> VLMResource:
    """The VLM resource configured by RAR_VLM_* environment variables."""
    env = os.environ if env is None else env
    return VLMResource(
        backend=env.get("RAR_VLM_BACKEND", "offline"),
        model_id=env.get("RAR_VLM_MODEL", ""),
        base_url=env.get("RAR_VLM_BASE_URL", "http://127.0.0.1:8000/v1"),
        api_key_env=env.get("RAR_VLM_API_KEY_ENV", "OPENAI_API_KEY"),
        device=env.get("RAR_VLM_DEVICE", "auto"),
        hallucination_policy=env.get("RAR_HALLUCINATION_POLICY", GuardPolicy.KEEP.value),
    )


def default_resources(settings: Any) -> dict[str, Any]:
    """The real resources for a `core.settings.Settings`."""
    return {
        "corpus": CorpusResource(
            data_root=str(settings.data_root),
            artifacts_dir=str(settings.artifacts_dir),
            image_check=os.environ.get("RAR_IMAGE_CHECK", ImageCheckLevel.DECODE.value),
        ),
        "lancedb": LanceDBResource(uri=settings.lancedb_uri),
        "mlflow": MlflowResource(
            tracking_uri=settings.mlflow_tracking_uri,
            artifact_location=str(settings.mlflow_artifacts),
        ),
        "vlm": vlm_from_env(),
    }
