"""The one workload table: what each asset's steps need, and where they run.

A *workload* names the scarce thing a step uses. It decides two things, both from
`WORKLOADS` below:

- the runs the instance limits: jobs and sensors tag their runs `rar/workload=<workload>`,
  and `dagster.yaml`'s `tag_concurrency_limits` caps each (`vlm` 2, `training` 1);
- the Celery queue a step goes to on a cluster (`deploy/`): every asset's op carries the
  `dagster-celery/queue` tag, so `vlm` steps reach the workers near the VLM fleet, `training`
  and `index` steps the GPU workers, and the rest any worker of the `default` queue.
"""

from __future__ import annotations

from rar_pipeline.core import names

# asset name, or the prefix of a per-config asset name -> its workload
WORKLOADS: dict[str, str] = {
    names.OFFLINE_CAPTIONER: "vlm",
    names.CORPUS_CAPTIONS: "vlm",
    names.ENHANCED_QUERIES: "vlm",
    names.RETRIEVER_CHECKPOINT: "training",
    names.LANCEDB_INDEX: "index",
    names.RETRIEVAL_EVAL: "index",
}
QUEUES: dict[str, str] = {"vlm": "vlm", "training": "gpu", "index": "gpu"}
DEFAULT_QUEUE = "default"
QUEUE_NAMES = (*dict.fromkeys(QUEUES.values()), DEFAULT_QUEUE)  # vlm, gpu, default


def workload_of(asset: str) -> str | None:
    """The workload of an asset by its bare name (None: nothing scarce)."""
    found = [prefix for prefix in WORKLOADS if asset == prefix or (
        prefix.endswith("_") and asset.startswith(prefix))]  # fmt: skip
    return WORKLOADS[found[0]] if found else None


def queue_of(asset: str) -> str:
    """The Celery queue an asset's steps go to."""
    workload = workload_of(asset)
    return QUEUES[workload] if workload else DEFAULT_QUEUE


def step_tags(asset: str) -> dict[str, str]:
    """The op tags an asset is declared with: its Celery queue."""
    return {names.CELERY_QUEUE: queue_of(asset)}


def run_tags(workload: str) -> dict[str, str]:
    """The tags of a run whose work is `workload` (what the instance's limits match)."""
    if workload not in QUEUES:
        raise ValueError(f"unknown workload {workload!r}: one of {sorted(QUEUES)}")
    return {names.WORKLOAD: workload}
