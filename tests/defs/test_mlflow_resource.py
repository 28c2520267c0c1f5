"""Run tracking for training: tags, file artifacts, the model registry, run links, resuming.

Shared behaviour is one specification run against both `MlflowResource` (real MLflow on a
module-wide sqlite store and artifact folder) and `FakeMlflow`, so that stages tested against
the fake log and register what real MLflow accepts, and as MLflow stores it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from rar_pipeline.defs.resources.fake_mlflow import FakeMlflow
from rar_pipeline.defs.resources.mlflow import MlflowResource
from rar_pipeline.defs.resources.tracking_rules import registered_model_name


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hash_tree(local: Path) -> dict[str, str]:
    """path (relative, posix) -> sha256, for a file or everything under a folder."""
    if local.is_file():
        return {local.name: _sha(local.read_bytes())}
    return {
        p.relative_to(local).as_posix(): _sha(p.read_bytes())
        for p in sorted(local.rglob("*"))
        if p.is_file()
    }


def _checkpoint(root: Path, seed: int) -> Path:
    """A training checkpoint folder as the retriever stage writes one: weights + JSON."""
    folder = root / f"checkpoint-{seed}"
    (folder / "tokenizer").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (folder / "model.safetensors").write_bytes(rng.bytes(4096))
    (folder / "config.json").write_text(json.dumps({"dim": 384, "seed": seed}))
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    return folder


def _model_name() -> str:
    """A fresh registered model name: the module shares one registry."""
    return f"retriever-{uuid.uuid4().hex[:8]}"


class RealTracker:
    """`MlflowResource` on the module's sqlite store, read back with a fresh `MlflowClient`."""

    def __init__(self, tracking_uri: str, artifact_location: str, experiment: str) -> None:
        self.resource = MlflowResource(
            tracking_uri=tracking_uri, artifact_location=artifact_location, experiment=experiment
        )
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def tags(self, run_id: str) -> dict[str, str]:
        tags = self.client.get_run(run_id).data.tags
        return {k: v for k, v in tags.items() if not k.startswith("mlflow.")}

    def metrics(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def files(self, run_id: str, scratch: Path) -> dict[str, str]:
        """Every artifact of the run, downloaded back, hashed."""
        scratch.mkdir(parents=True, exist_ok=True)
        local = self.client.download_artifacts(run_id, "", dst_path=str(scratch))
        return _hash_tree(Path(local))

    def versions(self, name: str, scratch: Path) -> list[dict]:
        """The model's versions, oldest first, with what their source holds (downloaded)."""
        found = sorted(
            self.client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
        )
        out = []
        for mv in found:
            dst = scratch / f"v{mv.version}"
            dst.mkdir(parents=True)
            local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst))
            out.append(
                {
                    "version": str(mv.version),
                    "run_id": mv.run_id,
                    "tags": dict(mv.tags),
                    "description": mv.description or None,
                    "files": _hash_tree(Path(local)),
                }
            )
        return out

    def model_names(self) -> set[str]:
        return {m.name for m in self.client.search_registered_models(max_results=1000)}


class FakeTracker:
    """`FakeMlflow`, read back from what it recorded."""

    def __init__(self) -> None:
        self.resource = FakeMlflow()

    def _run(self, run_id: str):
        (run,) = [r for r in self.resource.runs if r.run_id == run_id]
        return run

    def status(self, run_id: str) -> str:
        return self._run(run_id).status

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self._run(run_id).tags)

    def metrics(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted(self._run(run_id).metrics.get(key, []))

    def files(self, run_id: str, scratch: Path) -> dict[str, str]:
        return dict(self._run(run_id).files)

    def versions(self, name: str, scratch: Path) -> list[dict]:
        return [
            {
                "version": mv.version,
                "run_id": mv.run_id,
                "tags": dict(mv.tags),
                "description": mv.description,
                "files": dict(mv.files),
            }
            for mv in self.resource.registry.get(name, [])
        ]

    def model_names(self) -> set[str]:
        return set(self.resource.registry)


@pytest.fixture(params=["mlflow", "fake"])
def tracker(
    request: pytest.FixtureRequest, mlflow_store: dict[str, str]
) -> RealTracker | FakeTracker:
    if request.param == "fake":
        return FakeTracker()
    return RealTracker(experiment="training", **mlflow_store)


class TestTrainingTrackingSpec:
    """What the training stage relies on from any run tracker."""

    def test_logged_files_come_back_byte_identical(self, tracker, tmp_path):
        ckpt = _checkpoint(tmp_path, seed=1)
        loose = tmp_path / "eval.jsonl"
        loose.write_bytes(b'{"q": 1}\n{"q": 2}\n')
        with tracker.resource.start_run("artifacts") as run:
            run.log_artifacts(ckpt, "checkpoint")
            run.log_artifact(loose, "eval")
            run.log_artifact(loose)

        expected = {f"checkpoint/{p}": digest for p, digest in _hash_tree(ckpt).items()}
        expected["eval/eval.jsonl"] = expected["eval.jsonl"] = _sha(loose.read_bytes())
        assert tracker.files(run.run_id, tmp_path / "dl") == expected
        assert set(expected) == {
            "checkpoint/model.safetensors",
            "checkpoint/config.json",
            "checkpoint/tokenizer/vocab.txt",
            "eval/eval.jsonl",
            "eval.jsonl",
        }

    def test_missing_local_files_are_refused(self, tracker, tmp_path):
        with tracker.resource.start_run("missing-files") as run:
            with pytest.raises(FileNotFoundError):
                run.log_artifact(tmp_path / "nope.bin", "x")
            with pytest.raises(NotADirectoryError):
                run.log_artifacts(tmp_path / "nope", "x")
        assert tracker.files(run.run_id, tmp_path / "dl") == {}

    @pytest.mark.parametrize("bad", ["checkpoint/", "../outside", "/abs", "a//b", "./a"])
    def test_artifact_paths_mlflow_cannot_store_are_refused(self, tracker, tmp_path, bad):
        ckpt = _checkpoint(tmp_path, seed=2)
        with tracker.resource.start_run("bad-artifact-path") as run:
            with pytest.raises(ValueError, match="Invalid artifact path"):
                run.log_artifacts(ckpt, bad)
            with pytest.raises(ValueError, match="Invalid artifact path"):
                run.log_artifact(ckpt / "config.json", bad)

    def test_tags_set_during_a_run_are_readable(self, tracker):
        with tracker.resource.start_run("tags", tags={"stage": "train"}) as run:
            run.set_tags({"base_model": "minilm", "git_sha": "abc123"})
            run.set_tags({"stage": "train-resumed"})  # tags, unlike params, may change
            run.set_tags({})
        assert tracker.tags(run.run_id) == {
            "stage": "train-resumed",
            "base_model": "minilm",
            "git_sha": "abc123",
        }

    def test_tag_names_mlflow_cannot_store_are_refused(self, tracker):
        with tracker.resource.start_run("bad-tag") as run:
            with pytest.raises(Exception, match="recall@10"):
                run.set_tags({"ok": "1", "recall@10": "x"})
        assert tracker.tags(run.run_id) == {}  # all or nothing

    def test_two_registrations_are_versions_1_and_2_each_pointing_at_its_run(
        self, tracker, tmp_path
    ):
        name = _model_name()
        checkpoints = [_checkpoint(tmp_path, seed) for seed in (10, 11)]
        runs = []
        for i, ckpt in enumerate(checkpoints):
            with tracker.resource.start_run(f"train-{i}") as run:
                run.log_artifacts(ckpt, "checkpoint")
                run.log_dict({"recall_at_10": 0.5}, "eval/summary.json")
                version = run.register_model(
                    name,
                    "checkpoint",
                    tags={"recall_at_10": str(0.5 + i / 10)},
                    description=f"attempt {i}",
                )
            assert version == str(i + 1)
            runs.append(run)

        versions = tracker.versions(name, tmp_path / "dl")
        assert [v["version"] for v in versions] == ["1", "2"]
        assert [v["run_id"] for v in versions] == [r.run_id for r in runs]
        assert [v["files"] for v in versions] == [_hash_tree(c) for c in checkpoints]
        assert versions[0]["files"] != versions[1]["files"]
        assert [v["tags"] for v in versions] == [{"recall_at_10": "0.5"}, {"recall_at_10": "0.6"}]
        assert [v["description"] for v in versions] == ["attempt 0", "attempt 1"]

    def test_a_single_file_can_be_registered(self, tracker, tmp_path):
        name = _model_name()
        ckpt = _checkpoint(tmp_path, seed=3)
        with tracker.resource.start_run("single-file") as run:
            run.log_artifact(ckpt / "model.safetensors", "weights")
            assert run.register_model(name, "weights/model.safetensors") == "1"
        (version,) = tracker.versions(name, tmp_path / "dl")
        assert version["files"] == {
            "model.safetensors": _sha((ckpt / "model.safetensors").read_bytes())
        }

    def test_registering_what_was_not_logged_is_refused(self, tracker):
        name = _model_name()
        with tracker.resource.start_run("nothing-logged") as run:
            with pytest.raises(ValueError, match="no artifacts under 'checkpoint'"):
                run.register_model(name, "checkpoint")
        assert name not in tracker.model_names()

    @pytest.mark.parametrize(
        "bad", ["org/retriever", "retriever:v2", "", "  ", "..retriever", "retriever/.."]
    )
    def test_model_names_mlflow_cannot_store_are_refused(self, tracker, tmp_path, bad):
        with tracker.resource.start_run("bad-model-name") as run:
            run.log_artifacts(_checkpoint(tmp_path, seed=4), "checkpoint")
            with pytest.raises(ValueError, match="Invalid registered model name"):
                run.register_model(bad, "checkpoint")
        assert bad not in tracker.model_names()

    def test_model_version_tag_names_are_checked_before_registering(self, tracker, tmp_path):
        name = _model_name()
        with tracker.resource.start_run("bad-version-tag") as run:
            run.log_artifacts(_checkpoint(tmp_path, seed=5), "checkpoint")
            with pytest.raises(ValueError, match="recall@10"):
                run.register_model(name, "checkpoint", tags={"recall@10": "0.5"})
        assert name not in tracker.model_names()

    def test_a_killed_run_can_be_resumed_by_id(self, tracker, tmp_path):
        with pytest.raises(KeyboardInterrupt):
            with tracker.resource.start_run("train-long", tags={"attempt": "1"}) as first:
                first.log_params({"lr": 1e-4, "epochs": 2})
                first.log_metrics({"loss": 2.0}, step=0)
                raise KeyboardInterrupt  # the training process was stopped
        assert tracker.status(first.run_id) == "FAILED"

        name = _model_name()
        with tracker.resource.start_run(
            "train-long", tags={"attempt": "2"}, run_id=first.run_id
        ) as resumed:
            assert resumed.run_id == first.run_id
            assert tracker.status(first.run_id) == "RUNNING"
            resumed.log_params({"lr": 1e-4, "epochs": 2})  # same values: allowed
            resumed.log_metrics({"loss": 1.0}, step=1)
            resumed.log_artifacts(_checkpoint(tmp_path, seed=6), "checkpoint")
            assert resumed.register_model(name, "checkpoint") == "1"

        assert tracker.status(first.run_id) == "FINISHED"
        assert tracker.metrics(first.run_id, "loss") == [(0, 2.0), (1, 1.0)]
        assert tracker.tags(first.run_id) == {"attempt": "2"}
        assert [v["run_id"] for v in tracker.versions(name, tmp_path / "dl")] == [first.run_id]

    def test_resuming_checks_the_run(self, tracker):
        with tracker.resource.start_run("original") as run:
            pass
        with pytest.raises(ValueError, match="'original', not 'other'"):
            with tracker.resource.start_run("other", run_id=run.run_id):
                pass
        with pytest.raises(Exception, match="not found"):
            with tracker.resource.start_run("original", run_id=uuid.uuid4().hex):
                pass
        assert tracker.status(run.run_id) == "FINISHED"


class TestMlflowRegistry:
    """Real MLflow only: what the registry stores and how it copes with a concurrent creator."""

    def test_version_source_is_the_runs_artifact_folder(self, mlflow_store, tmp_path):
        tracker = RealTracker(experiment="registry", **mlflow_store)
        name = _model_name()
        with tracker.resource.start_run("source") as run:
            run.log_artifacts(_checkpoint(tmp_path, seed=20), "checkpoint")
            version = run.register_model(name, "checkpoint")

        mv = tracker.client.get_model_version(name, version)
        artifact_uri = tracker.client.get_run(run.run_id).info.artifact_uri
        assert mv.source == f"{artifact_uri}/checkpoint"
        assert tracker.client.get_model_version_download_uri(name, version) == mv.source
        assert mv.status == "READY"
        assert mv.run_link == run.run_url

    def test_a_model_created_meanwhile_by_someone_else_is_reused(self, mlflow_store, tmp_path):
        tracker = RealTracker(experiment="registry", **mlflow_store)
        name = _model_name()
        tracker.client.create_registered_model(name, description="made by another step")
        with tracker.resource.start_run("race") as run:
            run.log_artifacts(_checkpoint(tmp_path, seed=21), "checkpoint")
            assert run.register_model(name, "checkpoint") == "1"
        assert tracker.client.get_registered_model(name).description == "made by another step"


class TestRunUrl:
    def test_local_store_links_to_make_mlflow_ui(self, mlflow_store):
        tracker = RealTracker(experiment="urls", **mlflow_store)
        with tracker.resource.start_run("url") as run:
            pass
        experiment = tracker.client.get_experiment_by_name("urls")
        assert run.run_url == (
            f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.run_id}"
        )

    def test_ui_url_is_configurable_and_can_be_turned_off(self):
        def url(tracking_uri: str, **kw: str) -> str | None:
            resource = MlflowResource(tracking_uri=tracking_uri, artifact_location="/x", **kw)
            return resource.run_url("7", "abc")

        sqlite = "sqlite:////tmp/mlflow.db"
        assert (
            url(sqlite, ui_url="http://host:8080/") == "http://host:8080/#/experiments/7/runs/abc"
        )
        assert url(sqlite, ui_url="") is None
        assert url("https://mlflow.example.org/") == (
            "https://mlflow.example.org/#/experiments/7/runs/abc"
        )
        assert url("http://10.0.0.5:5000") == "http://10.0.0.5:5000/#/experiments/7/runs/abc"
        assert url("databricks") is None

    def test_fake_has_no_link_unless_given_a_ui_url(self):
        with FakeMlflow().start_run("plain") as plain:
            pass
        with FakeMlflow(ui_url="http://fake-ui").start_run("linked") as linked:
            pass
        assert plain.run_url is None
        assert linked.run_url == f"http://fake-ui/#/experiments/0/runs/{linked.run_id}"


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers-all-MiniLM-L6-v2"),
        ("retriever:v2", "retriever-v2"),
        ("  plain  ", "plain"),
    ],
)
def test_registered_model_name_derives_a_valid_name(raw, name):
    assert registered_model_name(raw) == name


def test_registered_model_name_refuses_what_cannot_be_made_valid():
    with pytest.raises(ValueError, match="Invalid registered model name"):
        registered_model_name("//")
