"""Object storage for real: SeaweedFS's S3, LanceDB tables on it, and MLflow's proxied artifacts.

The server is SeaweedFS (`weed mini`, a real S3-compatible server, not a mock) on a free
loopback port, with credentials; MLflow is a real tracking server on PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rar_pipeline.core import object_store
from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.maintenance import MaintenancePolicy
from rar_pipeline.core.object_store import check_concurrent_writes, conditional_put_honoured
from rar_pipeline.defs.resources import LanceDBResource, MlflowResource
from rar_pipeline.stack.servers import ObjectStore, mlflow_server, seaweedfs
from tests.conftest import require_server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    require_server("weed")
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """This process reaches the store as a deployment's processes do: the AWS variables."""
    for name, value in store.credentials.items():
        monkeypatch.setenv(name, value)
    check_concurrent_writes.cache_clear()
    return store


def _client(store: ObjectStore):
    return boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=store.access_key,
                        aws_secret_access_key=store.secret_key)  # fmt: skip


def test_the_store_refuses_a_second_conditional_write_of_a_key(store: ObjectStore):
    assert conditional_put_honoured(store.uri("probe"), _client(store))
    left = _client(store).list_objects_v2(Bucket=store.bucket, Prefix="probe/")
    assert left.get("KeyCount", 0) == 0  # the probe cleans up after itself


def test_the_store_refuses_a_client_without_its_credentials(store: ObjectStore):
    from botocore.exceptions import ClientError

    stranger = boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="nobody", aws_secret_access_key="x" * 16)  # fmt: skip
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        stranger.list_objects_v2(Bucket=store.bucket)


def _table(n: int, dim: int = 8, seed: int = 0) -> pa.Table:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pa.table({
        "did": [f"d{i}" for i in range(n)], "pools": [["local"]] * n,
        "text": [f"item {i}" for i in range(n)], "modality": ["text"] * n,
        "row_hash": [f"h{i}" for i in range(n)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
    })  # fmt: skip


def test_lancedb_tables_live_in_the_bucket(s3_env: ObjectStore):
    db = LanceDBResource(uri=s3_env.uri("lancedb"), s3_endpoint_url=s3_env.endpoint_url)
    rows = _table(40)
    db.upsert("corpus", rows, pd.DataFrame(columns=["did"]))
    db.upsert("corpus", _table(5, seed=1), pd.DataFrame({"did": ["d39"]}))
    assert db.count_rows("corpus") == 39  # d0-d4 replaced, d39 deleted
    query = rows.column("vector").to_numpy(zero_copy_only=False)[7]
    assert db.search("corpus", np.asarray(query, dtype=np.float32), 1)["did"].tolist() == ["d7"]
    # the indexes, and their maintenance through Lance's own API, on the bucket too
    db.build_indexes("corpus", AnnPlan(min_rows=30, rows_per_partition=20))
    db.upsert("corpus", _table(45, seed=2).slice(40), pd.DataFrame(columns=["did"]))
    assert db.index_health("corpus").unindexed_rows == 5
    done = db.maintain_indexes("corpus", MaintenancePolicy())
    assert done["steps"] == ["delta"] and done["after"]["unindexed_rows"] == 0
    objects = _client(s3_env).list_objects_v2(Bucket=s3_env.bucket, Prefix="lancedb/corpus")
    assert objects["KeyCount"] > 0


def test_a_store_that_ignores_conditional_writes_gets_no_index_writes_and_is_told_why(
    s3_env: ObjectStore, monkeypatch: pytest.MonkeyPatch
):
    real = object_store.boto3_client

    class IgnoresConditions:  # what a store without conditional writes does with the header
        def __init__(self, client) -> None:
            self.client = client

        def put_object(self, IfNoneMatch: str | None = None, **kwargs):  # noqa: N803
            return self.client.put_object(**kwargs)

        def delete_object(self, **kwargs):
            return self.client.delete_object(**kwargs)

    monkeypatch.setattr(object_store, "boto3_client", lambda *args: IgnoresConditions(real(*args)))
    db = LanceDBResource(uri=s3_env.uri("careless"), s3_endpoint_url=s3_env.endpoint_url)
    with pytest.raises(RuntimeError, match="ignores conditional writes.*RAR_LANCEDB_SINGLE_WRITER"):
        db.upsert("corpus", _table(3), pd.DataFrame(columns=["did"]))
    assert "corpus" not in db.table_names()
    single = LanceDBResource(
        uri=s3_env.uri("careless"), s3_endpoint_url=s3_env.endpoint_url, single_writer=True
    )
    single.upsert("corpus", _table(3), pd.DataFrame(columns=["did"]))
    assert single.count_rows("corpus") == 3


@pytest.mark.slow
def test_mlflow_keeps_runs_in_postgresql_and_artifacts_in_the_bucket_without_runs_holding_its_keys(
    store: ObjectStore, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)  # the run side holds no bucket credentials
    backend = postgres_url.replace("postgresql://", "postgresql+psycopg2://")
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights" * 1000)
    with mlflow_server(tmp_path / "mlflow", backend, store) as url:
        tracker = MlflowResource(tracking_uri=url, experiment="cluster")
        with tracker.start_run("train-full") as run:
            run.log_params({"config": "full"})
            run.log_metrics({"val_recall": 0.9}, step=1)
            run.log_artifact(checkpoint, "checkpoint")
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=url)
        assert client.get_run(run.run_id).data.metrics == {"val_recall": 0.9}
        back = client.download_artifacts(run.run_id, "checkpoint", dst_path=str(tmp_path / "dl"))
        assert (Path(back) / "model.safetensors").read_bytes() == checkpoint.read_bytes()
    listed = _client(store).list_objects_v2(Bucket=store.bucket, Prefix="mlflow/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any(k.endswith(f"{run.run_id}/artifacts/checkpoint/model.safetensors") for k in keys)
    body = _client(store).get_object(Bucket=store.bucket, Key=next(
        k for k in keys if k.endswith("model.safetensors")))["Body"].read()  # fmt: skip
    assert hashlib.sha256(body).digest() == hashlib.sha256(checkpoint.read_bytes()).digest()
