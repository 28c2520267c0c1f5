"""Run tracking for training: tags, file artifacts, datasets, logged models, the model
registry, run links, resuming.

Shared behaviour is one specification run against both `MlflowResource` (real MLflow on a
module-wide sqlite store and artifact folder) and `FakeMlflow`, so that stages tested against
the fake log and register what real MLflow accepts, and as MLflow stores it.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path

import mlflow.artifacts
import mlflow.exceptions
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from rar_pipeline.defs.resources.mlflow import MlflowResource
from rar_pipeline.defs.resources.tracking_rules import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TrackedDataset,
    frame_dataset,
    logged_model_name,
    registered_model_name,
)
from tests.fake_mlflow import FakeMlflow


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


def _model_holding(source: str) -> str | None:
    """The logged model whose artifact location `source` is, if it is one."""
    found = re.search(r"/models/(m-[0-9a-f]+)/artifacts$", source)
    return found.group(1) if found else None


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
                    # MLflow 3.17's sqlite registry does not keep a version's model_id: what
                    # links them is the source (the model's artifact location) and the model's
                    # `mlflow.modelVersions` tag (`model()`), which the UI reads
                    "model_id": mv.model_id or _model_holding(mv.source),
                }
            )
        return out

    def model_names(self) -> set[str]:
        return {m.name for m in self.client.search_registered_models(max_results=1000)}

    def datasets(self, run_id: str) -> list[tuple[TrackedDataset, str | None]]:
        """The run's dataset inputs, with their context."""
        out = []
        for given in self.client.get_run(run_id).inputs.dataset_inputs:
            d, tags = given.dataset, {t.key: t.value for t in given.tags}
            dataset = TrackedDataset(d.name, d.digest, json.loads(d.source)["uri"], d.schema,
                                     d.profile, d.source_type)  # fmt: skip
            out.append((dataset, tags.get("mlflow.data.context")))
        return out

    def model_inputs(self, run_id: str) -> list[str]:
        return [m.model_id for m in self.client.get_run(run_id).inputs.model_inputs]

    def model_outputs(self, run_id: str) -> list[str]:
        return [m.model_id for m in self.client.get_run(run_id).outputs.model_outputs]

    def model(self, model_id: str, scratch: Path) -> dict:
        """A logged model: what it is, where it came from, its files (downloaded), metrics."""
        model = self.client.get_logged_model(model_id)
        dst = scratch / model_id
        dst.mkdir(parents=True)
        try:
            local = mlflow.artifacts.download_artifacts(model.artifact_location, dst_path=str(dst))
        except mlflow.exceptions.MlflowException as exc:  # nothing logged to it yet
            assert "No such artifact" in exc.message
            local = str(dst)
        metrics: dict[str, list] = {}
        for m in model.metrics or []:
            metrics.setdefault(m.key, []).append((m.step, m.value))
        return {
            "name": model.name,
            "status": str(model.status),
            "source_run_id": model.source_run_id,
            "params": dict(model.params),
            "model_type": model.model_type,
            "files": _hash_tree(Path(local)),
            "metrics": {k: sorted(v) for k, v in metrics.items()},
            "versions": [
                (v["name"], v["version"])
                for v in json.loads(model.tags.get("mlflow.modelVersions", "[]"))
            ],  # fmt: skip
        }


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
                "model_id": mv.model_id,
            }
            for mv in self.resource.registry.get(name, [])
        ]

    def model_names(self) -> set[str]:
        return set(self.resource.registry)

    def datasets(self, run_id: str) -> list[tuple[TrackedDataset, str | None]]:
        return list(self._run(run_id).datasets)

    def model_inputs(self, run_id: str) -> list[str]:
        return list(self._run(run_id).model_inputs)

    def model_outputs(self, run_id: str) -> list[str]:
        return list(self._run(run_id).model_outputs)

    def model(self, model_id: str, scratch: Path) -> dict:
        model = self.resource.models[model_id]
        return {
            "name": model.name,
            "status": model.status,
            "source_run_id": model.source_run_id,
            "params": dict(model.params),
            "model_type": model.model_type,
            "files": dict(model.files),
            "metrics": {k: sorted(v) for k, v in model.metrics.items()},
            "versions": list(model.versions),
        }


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

    def test_a_checkpoint_is_a_logged_model_the_run_outputs_and_a_version_holds(
        self, tracker, tmp_path
    ):
        name, ckpt = _model_name(), _checkpoint(tmp_path, seed=30)
        with tracker.resource.start_run("train-model") as run:
            model_id = run.create_logged_model(name, params={"lr": 0.01}, model_type="retriever")
            assert tracker.model(model_id, tmp_path / "pending")["status"] == "PENDING"
            run.log_metrics({"best_val_recall_at_1": 0.75}, model_id=model_id)
            run.log_model_artifacts(model_id, ckpt)
            run.finalize_logged_model(model_id)
            version = run.register_model(name, model_id=model_id, description="trained")

        model = tracker.model(model_id, tmp_path / "dl")
        assert model == {
            "name": name, "status": "READY", "source_run_id": run.run_id,
            "params": {"lr": "0.01"}, "model_type": "retriever", "files": _hash_tree(ckpt),
            "metrics": {"best_val_recall_at_1": [(0, 0.75)]}, "versions": [(name, "1")],
        }  # fmt: skip
        assert tracker.model_outputs(run.run_id) == [model_id]
        assert tracker.metrics(run.run_id, "best_val_recall_at_1") == [(0, 0.75)]  # the run's too
        (registered,) = tracker.versions(name, tmp_path / "versions")
        assert version == registered["version"] == "1"
        assert registered["model_id"] == model_id and registered["run_id"] == run.run_id
        assert registered["files"] == _hash_tree(ckpt)  # the model's files, not the run's
        assert tracker.files(run.run_id, tmp_path / "run") == {}  # stored once, with the model

    def test_a_failed_run_leaves_its_unfinished_model_failed(self, tracker, tmp_path):
        with pytest.raises(RuntimeError, match="diverged"):
            with tracker.resource.start_run("train-diverged") as run:
                model_id = run.create_logged_model(_model_name())
                raise RuntimeError("diverged")
        assert tracker.model(model_id, tmp_path)["status"] == "FAILED"

    def test_the_training_data_is_the_runs_dataset_input(self, tracker, tmp_path):
        frame = pd.DataFrame({"qid": ["1:1", "1:2"], "query_img_path": [None, "a.png"],
                              "task_id": [0, 3], "neg_dids": [["9:2"], []]})  # fmt: skip
        frame.to_parquet(tmp_path / "pairs.parquet")
        dataset = frame_dataset(frame, "training_pairs_full", tmp_path / "pairs.parquet")
        with tracker.resource.start_run("train-data") as run:
            run.log_input(dataset, context="training")
        assert tracker.datasets(run.run_id) == [(dataset, "training")]
        assert dataset.source == str(tmp_path / "pairs.parquet") and len(dataset.digest) == 16
        columns = {c["name"]: c for c in json.loads(dataset.schema)["mlflow_colspec"]}
        assert columns["qid"] == {"type": "string", "name": "qid", "required": True}
        assert columns["task_id"]["type"] == "long" and not columns["query_img_path"]["required"]
        assert json.loads(dataset.profile) == {"num_rows": 2, "num_elements": 8}

    def test_an_evaluation_links_the_model_it_evaluated(self, tracker, tmp_path):
        with tracker.resource.start_run("train-evaluated") as train:
            model_id = train.create_logged_model(_model_name())
            train.log_model_artifacts(model_id, _checkpoint(tmp_path, seed=31))
            train.finalize_logged_model(model_id)
        with tracker.resource.start_run("eval-it") as evaluation:
            evaluation.log_input(model_id=model_id)
            evaluation.log_metrics({"local/macro/recall_at_5": 0.5}, model_id=model_id)
        assert tracker.model_inputs(evaluation.run_id) == [model_id]
        assert tracker.model_outputs(evaluation.run_id) == []
        assert tracker.model(model_id, tmp_path)["metrics"] == {
            "local/macro/recall_at_5": [(0, 0.5)]
        }

    def test_a_model_the_store_does_not_hold_is_not_linked(self, tracker):
        with tracker.resource.start_run("eval-unknown") as run:
            run.log_input(model_id="m-00000000000000000000000000000000")  # e.g. not synced
            run.log_metrics({"recall": 0.5}, model_id="m-00000000000000000000000000000000")
        assert tracker.model_inputs(run.run_id) == []
        assert tracker.metrics(run.run_id, "recall") == [(0, 0.5)]  # the run still has it

    def test_what_logged_models_mlflow_cannot_store_are_refused(self, tracker, tmp_path):
        name = _model_name()
        with tracker.resource.start_run("bad-logged-model") as run:
            with pytest.raises(ValueError, match="Invalid logged model name"):
                run.create_logged_model("rar-demo.v1")
            with pytest.raises(ValueError, match="one of them"):
                run.register_model(name)
            with pytest.raises(ValueError, match="one of them"):
                run.register_model(name, "checkpoint", model_id="m-1")
            with pytest.raises(ValueError, match="READY or FAILED"):
                run.finalize_logged_model("m-1", "DONE")
            with pytest.raises(ValueError, match="a dataset or a model_id"):
                run.log_input()
        assert tracker.model_outputs(run.run_id) == [] and name not in tracker.model_names()
        assert logged_model_name("rar-demo.v1/full") == "rar-demo-v1-full"


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
            "?workflowType=machine_learning"  # the UI's model-training mode, not GenAI's
        )
        assert tracker.resource.experiment_url(experiment.experiment_id) == (
            f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
            "?workflowType=machine_learning"
        )

    def test_the_experiment_is_a_model_training_one_unless_a_person_chose(self, mlflow_store):
        tracker = RealTracker(experiment="kind", **mlflow_store)
        with tracker.resource.start_run("first"):
            pass
        experiment = tracker.client.get_experiment_by_name("kind")
        assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
        # an experiment made before (untagged) is tagged; a kind picked in the UI stays
        older = tracker.client.create_experiment("older", artifact_location="file:///tmp/x")
        genai = {EXPERIMENT_KIND_TAG: "genai_development"}
        chosen = tracker.client.create_experiment("chosen", "file:///tmp/y", tags=genai)
        for name in ("older", "chosen"):
            with tracker.resource.model_copy(update={"experiment": name}).start_run("r"):
                pass
        assert tracker.client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
        assert (
            tracker.client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
        )

    def test_ui_url_is_configurable_and_can_be_turned_off(self):
        def url(tracking_uri: str, **kw: str) -> str | None:
            resource = MlflowResource(tracking_uri=tracking_uri, artifact_location="/x", **kw)
            return resource.run_url("7", "abc")

        sqlite, mode = "sqlite:////tmp/mlflow.db", "?workflowType=machine_learning"
        assert url(sqlite, ui_url="http://host:8080/") == (
            f"http://host:8080/#/experiments/7/runs/abc{mode}"
        )
        assert url(sqlite, ui_url="") is None
        assert url("https://mlflow.example.org/") == (
            f"https://mlflow.example.org/#/experiments/7/runs/abc{mode}"
        )
        assert url("http://10.0.0.5:5000") == f"http://10.0.0.5:5000/#/experiments/7/runs/abc{mode}"
        assert url("databricks") is None

    def test_fake_has_no_link_unless_given_a_ui_url(self):
        with FakeMlflow().start_run("plain") as plain:
            pass
        with FakeMlflow(ui_url="http://fake-ui").start_run("linked") as linked:
            pass
        assert plain.run_url is None
        assert linked.run_url == (
            f"http://fake-ui/#/experiments/0/runs/{linked.run_id}?workflowType=machine_learning"
        )


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
