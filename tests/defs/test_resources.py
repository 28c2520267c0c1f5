"""Specifications for the resources in `rar_pipeline.defs.resources`.

Each external system has a real resource and a fake one. The vector-store and run-tracking
specifications below are written once and run against both implementations, so the fakes
the other tests rely on cannot drift from what LanceDB and MLflow really do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.defs.resources import (
    CorpusResource,
    LanceDBResource,
    MlflowResource,
)
from tests.fake_mlflow import FakeMlflow
from tests.fake_stores import FakeVectorStore

# ---------------------------------------------------------------------------
# vector store: one specification, two implementations

DIM = 4


def make_frame(ids: list[str], vectors: np.ndarray) -> pd.DataFrame:
    """Rows shaped like the pipeline's tables: id, text and a float32 `vector`."""
    vectors = np.asarray(vectors, dtype=np.float32)
    assert vectors.shape == (len(ids), DIM)
    return pd.DataFrame(
        {
            "id": ids,
            "text": [f"text of {i}" for i in ids],
            "vector": list(vectors),
        }
    )


# Points on distinct shells around the origin, so that every query below has one
# unambiguous ranking (no ties between rows).
BASE_VECTORS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 2.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 4.0],
        [1.0, 1.0, 1.0, 1.0],
    ],
    dtype=np.float32,
)
BASE_IDS = ["origin", "x1", "y2", "z3", "w4", "ones"]


@pytest.fixture
def base_frame() -> pd.DataFrame:
    return make_frame(BASE_IDS, BASE_VECTORS)


StoreFactory = Callable[[Path], Any]

STORE_FACTORIES: dict[str, StoreFactory] = {
    "lancedb": lambda root: LanceDBResource(uri=str(root / "lance")),
    "fake": lambda root: FakeVectorStore(),
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each vector-store test runs once on real LanceDB (on tmp_path) and once on the fake."""
    return STORE_FACTORIES[request.param](tmp_path)


def squared_l2(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    return ((np.asarray(vectors, np.float32) - np.asarray(query, np.float32)) ** 2).sum(axis=1)


class TestVectorStoreSpec:
    """What the pipeline relies on from any vector store."""

    def test_write_table_returns_row_count_and_lists_the_table(self, store, base_frame):
        assert store.write_table("candidates", base_frame) == len(BASE_IDS)
        assert store.table_names() == ["candidates"]
        assert store.count_rows("candidates") == len(BASE_IDS)

    def test_table_names_lists_every_table(self, store, base_frame):
        store.write_table("b_table", base_frame)
        store.write_table("a_table", base_frame.iloc[:2])
        assert sorted(store.table_names()) == ["a_table", "b_table"]
        assert store.count_rows("a_table") == 2
        assert store.count_rows("b_table") == len(BASE_IDS)

    def test_search_returns_nearest_row_first_with_distance(self, store, base_frame):
        store.write_table("candidates", base_frame)
        query = np.array([0.0, 0.1, 2.9, 0.0], dtype=np.float32)  # next to z3

        hits = store.search("candidates", query, k=3)

        assert len(hits) == 3
        assert hits["id"].iloc[0] == "z3"
        assert hits["text"].iloc[0] == "text of z3"
        assert "distance" in hits.columns
        assert "_distance" not in hits.columns
        distances = hits["distance"].to_numpy(dtype=np.float64)
        assert np.all(np.diff(distances) >= 0), "hits must be sorted by ascending distance"

    def test_distance_is_squared_euclidean(self, store, base_frame):
        store.write_table("candidates", base_frame)
        query = np.array([0.5, -0.5, 0.25, 2.0], dtype=np.float32)

        hits = store.search("candidates", query, k=len(BASE_IDS))

        by_id = dict(zip(BASE_IDS, squared_l2(BASE_VECTORS, query), strict=True))
        expected = np.array([by_id[i] for i in hits["id"]])
        np.testing.assert_allclose(hits["distance"].to_numpy(np.float64), expected, rtol=1e-5)
        np.testing.assert_allclose(sorted(by_id.values()), expected, rtol=1e-5)

    def test_search_returns_at_most_k_rows(self, store, base_frame):
        store.write_table("candidates", base_frame)
        query = np.zeros(DIM, dtype=np.float32)
        assert store.search("candidates", query, k=1)["id"].tolist() == ["origin"]
        assert len(store.search("candidates", query, k=100)) == len(BASE_IDS)

    def test_search_accepts_float64_query(self, store, base_frame):
        store.write_table("candidates", base_frame)
        hits = store.search("candidates", np.array([0.9, 0.0, 0.0, 0.0]), k=1)
        assert hits["id"].tolist() == ["x1"]

    def test_append_adds_rows_and_they_are_searchable(self, store, base_frame):
        store.write_table("candidates", base_frame)
        extra = make_frame(["far"], np.array([[10.0, 10.0, 10.0, 10.0]]))

        assert store.write_table("candidates", extra, mode="append") == len(BASE_IDS) + 1

        assert store.count_rows("candidates") == len(BASE_IDS) + 1
        hits = store.search("candidates", np.full(DIM, 9.0, dtype=np.float32), k=1)
        assert hits["id"].tolist() == ["far"]
        # the original rows are still there
        hits = store.search("candidates", np.zeros(DIM, dtype=np.float32), k=1)
        assert hits["id"].tolist() == ["origin"]

    def test_append_to_a_missing_table_creates_it(self, store, base_frame):
        assert store.write_table("fresh", base_frame, mode="append") == len(BASE_IDS)
        assert store.table_names() == ["fresh"]
        assert store.count_rows("fresh") == len(BASE_IDS)

    def test_overwrite_replaces_rows(self, store, base_frame):
        store.write_table("candidates", base_frame)
        replacement = make_frame(["only"], np.array([[5.0, 5.0, 5.0, 5.0]]))

        assert store.write_table("candidates", replacement, mode="overwrite") == 1

        assert store.count_rows("candidates") == 1
        hits = store.search("candidates", np.zeros(DIM, dtype=np.float32), k=10)
        assert hits["id"].tolist() == ["only"]

    def test_overwrite_is_the_default_mode(self, store, base_frame):
        store.write_table("candidates", base_frame)
        assert store.write_table("candidates", base_frame.iloc[:2]) == 2
        assert store.count_rows("candidates") == 2

    def test_tables_are_independent(self, store, base_frame):
        store.write_table("a", base_frame)
        store.write_table("b", make_frame(["b_only"], np.ones((1, DIM))))
        store.write_table("b", make_frame(["b_more"], np.zeros((1, DIM))), mode="append")
        assert store.count_rows("a") == len(BASE_IDS)
        assert store.count_rows("b") == 2


def test_lancedb_creates_its_local_folder(tmp_path: Path, base_frame):
    root = tmp_path / "nested" / "lance"
    store = LanceDBResource(uri=str(root))
    store.write_table("candidates", base_frame)
    assert root.is_dir()
    # a second resource on the same folder sees the same table: it is persisted
    assert LanceDBResource(uri=str(root)).count_rows("candidates") == len(BASE_IDS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fake_vector_store_ranks_like_lancedb(tmp_path: Path, seed: int):
    """Same data and queries: the fake returns the same ids in the same order as LanceDB."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(40, DIM)).astype(np.float32)
    frame = make_frame([f"row{i:02d}" for i in range(len(vectors))], vectors)
    real = LanceDBResource(uri=str(tmp_path / "lance"))
    fake = FakeVectorStore()
    real.write_table("candidates", frame)
    fake.write_table("candidates", frame)

    for query in rng.normal(size=(5, DIM)).astype(np.float32):
        real_hits = real.search("candidates", query, k=7)
        fake_hits = fake.search("candidates", query, k=7)
        assert real_hits["id"].tolist() == fake_hits["id"].tolist()
        np.testing.assert_allclose(
            real_hits["distance"].to_numpy(np.float64),
            fake_hits["distance"].to_numpy(np.float64),
            rtol=1e-4,
        )


# ---------------------------------------------------------------------------
# run tracking: one specification, two implementations


@dataclass
class RunView:
    """A tracked run as read back from either implementation, in MLflow's vocabulary."""

    run_name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]  # MLflow stores params as strings
    metrics: dict[str, list[tuple[int, float]]]  # key -> [(step, value)] by step
    artifacts: dict[str, Any]  # artifact file -> its (JSON) content


class RealTracker:
    """`MlflowResource` on a local sqlite store, read back with a fresh `MlflowClient`."""

    def __init__(self, tracking_uri: str, artifact_location: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.resource = MlflowResource(
            tracking_uri=tracking_uri, artifact_location=artifact_location, experiment=experiment
        )
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def read(self, run_id: str, scratch: Path) -> RunView:
        run = self.client.get_run(run_id)
        metrics = {
            key: sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))
            for key in run.data.metrics
        }
        artifacts = {}
        for info in self.client.list_artifacts(run_id):
            local = self.client.download_artifacts(run_id, info.path, dst_path=str(scratch))
            artifacts[info.path] = json.loads(Path(local).read_text())
        return RunView(
            run_name=run.info.run_name,
            status=run.info.status,
            tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            params=dict(run.data.params),
            metrics=metrics,
            artifacts=artifacts,
        )


class FakeTracker:
    """`FakeMlflow`, read back from its recorded runs."""

    def __init__(self) -> None:
        self.resource = FakeMlflow()

    def read(self, run_id: str, scratch: Path) -> RunView:
        (run,) = [r for r in self.resource.runs if r.run_id == run_id]
        return RunView(
            run_name=run.run_name,
            status=run.status,
            tags=dict(run.tags),
            params={k: str(v) for k, v in run.params.items()},
            metrics={k: sorted(v) for k, v in run.metrics.items()},
            artifacts=dict(run.artifacts),
        )


@pytest.fixture(params=["mlflow", "fake"])
def tracker(
    request: pytest.FixtureRequest, mlflow_store: dict[str, str]
) -> RealTracker | FakeTracker:
    if request.param == "fake":
        return FakeTracker()
    return RealTracker(experiment="spec", **mlflow_store)


class TestRunTrackingSpec:
    """What the pipeline relies on from any run tracker."""

    def test_finished_run_records_params_metrics_and_artifacts(self, tracker, tmp_path):
        with tracker.resource.start_run("train", tags={"stage": "eval"}) as run:
            run.log_params({"k": 10, "model": "minilm"})
            run.log_metrics({"recall_at_10": 0.5, "mrr": 0.25}, step=0)
            run.log_metrics({"recall_at_10": 0.75}, step=1)
            run.log_dict({"ids": ["a", "b"], "n": 2}, "summary.json")

        view = tracker.read(run.run_id, tmp_path)
        assert view.run_name == "train"
        assert view.status == "FINISHED"
        assert view.tags == {"stage": "eval"}
        assert view.params == {"k": "10", "model": "minilm"}
        assert view.metrics == {"recall_at_10": [(0, 0.5), (1, 0.75)], "mrr": [(0, 0.25)]}
        assert view.artifacts == {"summary.json": {"ids": ["a", "b"], "n": 2}}

    def test_metrics_without_step_are_recorded_at_step_zero(self, tracker, tmp_path):
        with tracker.resource.start_run("no-step") as run:
            run.log_metrics({"loss": 3})

        view = tracker.read(run.run_id, tmp_path)
        assert view.metrics == {"loss": [(0, 3.0)]}
        assert view.tags == {}

    def test_failing_body_marks_run_failed_and_propagates(self, tracker, tmp_path):
        with pytest.raises(RuntimeError, match="boom"):
            with tracker.resource.start_run("broken") as run:
                run.log_params({"stage": "before failure"})
                raise RuntimeError("boom")

        view = tracker.read(run.run_id, tmp_path)
        assert view.status == "FAILED"
        assert view.params == {"stage": "before failure"}

    def test_each_run_gets_its_own_id(self, tracker, tmp_path):
        with tracker.resource.start_run("first") as first:
            first.log_params({"which": "first"})
        with tracker.resource.start_run("second") as second:
            second.log_params({"which": "second"})

        assert first.run_id != second.run_id
        assert tracker.read(first.run_id, tmp_path).params == {"which": "first"}
        assert tracker.read(second.run_id, tmp_path).params == {"which": "second"}

    # The two specs below are MLflow's own rules; the fake enforces them too, so code tested
    # against the fake cannot log what real MLflow refuses.

    def test_metric_names_mlflow_cannot_store_are_refused(self, tracker, tmp_path):
        with pytest.raises(Exception, match="recall@10"):
            with tracker.resource.start_run("bad-metric-name") as run:
                run.log_metrics({"recall@10": 0.5})
        assert tracker.read(run.run_id, tmp_path).status == "FAILED"

    def test_a_param_cannot_change_value_within_a_run(self, tracker, tmp_path):
        with pytest.raises(Exception, match="(?i)param"):
            with tracker.resource.start_run("param-change") as run:
                run.log_params({"k": 3})
                run.log_params({"k": 3})  # logging the same value again is fine
                run.log_params({"k": 4})
        view = tracker.read(run.run_id, tmp_path)
        assert view.status == "FAILED"
        assert view.params == {"k": "3"}


class TestMlflowResource:
    """Real MLflow only: where runs and artifacts land."""

    def test_runs_land_in_the_named_experiment(self, mlflow_store):
        tracker = RealTracker(experiment="named-experiment", **mlflow_store)
        with tracker.resource.start_run("one") as first:
            pass
        with tracker.resource.start_run("two") as second:
            pass

        client = MlflowClient(tracking_uri=mlflow_store["tracking_uri"])
        experiment = client.get_experiment_by_name("named-experiment")
        assert experiment is not None
        run_ids = {
            r.info.run_id for r in client.search_runs([experiment.experiment_id], max_results=10)
        }
        assert run_ids == {first.run_id, second.run_id}
        assert client.get_run(first.run_id).info.end_time is not None

    def test_artifacts_are_written_under_artifact_location(self, mlflow_store):
        tracker = RealTracker(experiment="artifact-location", **mlflow_store)
        with tracker.resource.start_run("with-artifact") as run:
            run.log_dict({"answer": 42}, "report/result.json")

        client = MlflowClient(tracking_uri=mlflow_store["tracking_uri"])
        listed = [a.path for a in client.list_artifacts(run.run_id, "report")]
        assert listed == ["report/result.json"]
        root = Path(mlflow_store["artifact_location"]).resolve()
        on_disk = [p for p in root.rglob("result.json") if run.run_id in p.parts]
        assert len(on_disk) == 1
        assert json.loads(on_disk[0].read_text()) == {"answer": 42}

    def test_creates_the_sqlite_folder(self, tmp_path):
        db = tmp_path / "not" / "yet" / "mlflow.db"
        resource = MlflowResource(
            tracking_uri=f"sqlite:///{db}",
            artifact_location=str(tmp_path / "artifacts"),
            experiment="fresh",
        )
        with resource.start_run("first") as run:
            pass
        assert db.is_file()
        finished = MlflowClient(tracking_uri=f"sqlite:///{db}").get_run(run.run_id)
        assert (finished.info.run_name, finished.info.status) == ("first", "FINISHED")


def test_fake_mlflow_keeps_runs_in_order():
    fake = FakeMlflow()
    with fake.start_run("a"):
        pass
    with pytest.raises(KeyError):
        with fake.start_run("b"):
            raise KeyError("x")
    assert [(r.run_name, r.status) for r in fake.runs] == [("a", "FINISHED"), ("b", "FAILED")]


def test_fake_mlflow_run_is_running_inside_the_block():
    fake = FakeMlflow()
    with fake.start_run("live"):
        assert fake.runs[0].status == "RUNNING"
    assert fake.runs[0].status == "FINISHED"


def test_fake_mlflow_records_what_the_steps_of_a_graph_logged(tmp_path):
    """Dagster hands a step a copy of the resource: the test's instance still sees it all."""
    import dagster as dg

    (tmp_path / "weights.safetensors").write_bytes(b"w")

    @dg.asset
    def trained(mlflow: FakeMlflow) -> None:
        with mlflow.start_run("train") as run:
            model_id = run.create_logged_model("model")
            run.log_model_artifacts(model_id, tmp_path)
            run.finalize_logged_model(model_id)
            run.register_model("model", model_id=model_id)

    fake = FakeMlflow()
    assert dg.materialize([trained], resources={"mlflow": fake}).success
    (run,) = fake.runs
    (model,) = fake.models.values()
    assert run.model_outputs == [model.model_id] and model.status == "READY"
    assert [v.model_id for v in fake.registry["model"]] == [model.model_id]


# ---------------------------------------------------------------------------
# corpus


def corpus(tmp_path: Path, **overrides: Any) -> CorpusResource:
    return CorpusResource(
        data_root=str(tmp_path / "data"), artifacts_dir=str(tmp_path / "out"), **overrides
    )


@pytest.mark.parametrize("level", list(ImageCheckLevel))
def test_image_policy_maps_check_level_and_max_pixels(tmp_path: Path, level: ImageCheckLevel):
    policy = corpus(tmp_path, image_check=level.value, max_pixels=1234).image_policy()
    assert policy == ImageCheck(level=level, max_pixels=1234)
    assert policy.level is level


def test_image_policy_defaults_to_full_decode(tmp_path: Path):
    assert corpus(tmp_path).image_policy() == ImageCheck(
        level=ImageCheckLevel.DECODE, max_pixels=40_000_000
    )


@pytest.mark.parametrize("bad", ["DECODE ", "full", "", "none"])
def test_an_unknown_image_check_level_is_refused_when_the_resource_is_made(tmp_path, bad):
    with pytest.raises(ValueError, match="'decode', 'header', 'exists' or 'off'"):
        corpus(tmp_path, image_check=bad)
