"""The README's prompt-edit path, walked in a browser as a user would, against the real
webserver: `dagster dev` on 127.0.0.1.

The graph is materialized on a small corpus; the corpus caption prompt is edited in the
project's prompts file (`RAR_PROMPTS`, read when the code location loads: the package's
source is never touched, as for a user who installed it); the browser reloads the code
location (Deployment > Reload); every partition's stale status is read over GraphQL; the
`current_version` checks, run by `code_version_drift_sensor` after the reload, fail on
exactly what the edit made outdated, and the browser looks at them; the browser launches
the one action, the `refresh` job with `include_training: true` (Launchpad > Launch Run),
and watches the backfill it submits. Then every asset is fresh, each shard, index and the
evaluation were materialized once, only captioned items went to the VLM, and the `none`
and `query` configs were never recomputed. The screenshots in docs/images come from this
walk (`RAR_SCREENSHOT_DIR` keeps them; tests/browser.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from rar_pipeline.core.enhance import prompts
from rar_pipeline.defs.drift import CURRENT_VERSION
from rar_pipeline.stack.processes import free_port, server_process
from tests.browser import browser_page, chromium, screenshot
from tests.projects import PROJECT_VARS

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
LOCATION = "rar_pipeline"
NAMESPACE = "mbeir_mini"  # the corpus' (defs.namespace): its data root's folder name


def key_of(asset: str) -> dg.AssetKey:
    return dg.AssetKey([NAMESPACE, asset])


class GraphQL:
    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            payload = json.loads(answer.read())
        assert "errors" not in payload, payload["errors"]
        return payload["data"]


STALE = """
query Stale($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    isPartitioned
    staleStatus
    partitionKeysByDimension { partitionKeys }
  }
}"""
STALE_BY_PARTITION = """
query StaleByPartition($keys: [AssetKeyInput!], $partitions: [String!]) {
  assetNodes(assetKeys: $keys) { staleStatusByPartition(partitions: $partitions) }
}"""
LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
BACKFILL_STATUS = """
query BackfillStatus($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status numCancelable }
    ... on PythonError { message }
  }
}"""


def stale_statuses(gql: GraphQL) -> dict[str, dict[str | None, str]]:
    """Asset -> partition (None: unpartitioned) -> FRESH | STALE | MISSING."""
    out: dict[str, dict[str | None, str]] = {}
    for node in gql(STALE)["assetNodes"]:
        key = node["assetKey"]["path"]
        name = key[-1]  # every key is in the corpus' namespace
        if not node["isPartitioned"]:
            out[name] = {None: node["staleStatus"]}
            continue
        partitions = node["partitionKeysByDimension"][0]["partitionKeys"]
        statuses = gql(STALE_BY_PARTITION, keys=[{"path": key}], partitions=partitions)
        by_partition = statuses["assetNodes"][0]["staleStatusByPartition"]
        out[name] = dict(zip(partitions, by_partition, strict=True))
    return out


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str | None) -> dict:
    event = instance.get_latest_materialization_event(key_of(asset))
    if partition is not None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key_of(asset), asset_partitions=[partition]),
            limit=1,
        ).records
        event = records[0].event_log_entry if records else None
    assert event is not None, (asset, partition)
    meta = event.asset_materialization.metadata
    return {k: getattr(v, "value", v) for k, v in meta.items()}


def await_drift_check(
    instance: dg.DagsterInstance, asset: str, *, passed: bool, timeout: float = 240
) -> tuple[str, dict]:
    """Wait until `asset`'s latest current_version check has `passed`; its run and metadata."""
    key = dg.AssetCheckKey(key_of(asset), CURRENT_VERSION)
    deadline = time.monotonic() + timeout
    while True:
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
        evaluation = (
            record.event.dagster_event.event_specific_data if record and record.event else None
        )
        if isinstance(evaluation, dg.AssetCheckEvaluation) and evaluation.passed == passed:
            return record.run_id, {
                k: getattr(v, "value", v) for k, v in evaluation.metadata.items()
            }
        assert time.monotonic() < deadline, (
            f"{asset}'s {CURRENT_VERSION} check never passed={passed}"
        )
        time.sleep(2)


def await_run(instance: dg.DagsterInstance, run_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not instance.get_run_by_id(run_id).is_finished:
        assert time.monotonic() < deadline, f"run {run_id} did not finish"
        time.sleep(1)


def drift_check_in_run(instance: dg.DagsterInstance, asset: str, run_id: str) -> bool:
    """Whether `asset`'s current_version check passed in run `run_id`."""
    key = dg.AssetCheckKey(key_of(asset), CURRENT_VERSION)
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
    [record] = [r for r in history if r.run_id == run_id]
    return record.event.dagster_event.event_specific_data.passed


def reloaded(statuses: dict[str, dict[str | None, str]]) -> bool:
    """Whether the webserver answers from the reloaded location (first and last stale)."""
    return set(statuses["corpus_captions"].values()) == {"STALE"} and statuses[
        "retrieval_eval"
    ] == {None: "STALE"}


def reload_in_the_ui(page, url: str) -> None:
    """Deployment > Code locations > Reload, as a user picks up an edited prompts file."""
    page.goto(f"{url}/deployment/locations")
    page.get_by_text("Loaded").first.wait_for()
    page.locator("button", has_text="Reload").filter(has_not_text="all").click()
    page.get_by_text("Loaded").first.wait_for()


def look_at_the_failed_check(page, url: str, folder: Path, outdated: list[str]) -> None:
    """What a user sees after the reload: the lineage graph and the failing check."""
    page.goto(f"{url}/locations/{LOCATION}/asset-groups/enhancement")
    page.get_by_text("corpus_captions", exact=True).first.wait_for()
    page.get_by_text("2 / 3 Passed").wait_for()  # corpus_captions: current_version failed
    # the nodes' status icons arrive after the counts: let them, then load once more
    page.wait_for_timeout(6000)
    page.reload()
    page.get_by_text("2 / 3 Passed").wait_for()
    page.wait_for_timeout(6000)
    screenshot(page, folder / "dagster_prompt_edit_lineage.png")
    page.goto(f"{url}/assets/{NAMESPACE}/corpus_captions?view=checks")
    page.get_by_text(CURRENT_VERSION, exact=True).first.click()
    page.get_by_text("outdated_partitions").wait_for()
    text = page.inner_text("body")
    assert all(shard in text for shard in outdated) and "corpus_caption (" in text
    assert "launch the `refresh` job" in text
    screenshot(page, folder / "dagster_prompt_edit_check.png")


def launch_refresh_in_the_ui(page, url: str, folder: Path) -> str:
    """Jobs > refresh > Launchpad: include_training true, Launch Run; the backfill's id."""
    page.goto(f"{url}/locations/{LOCATION}/jobs/refresh/playground")
    page.get_by_text("include_training").wait_for()
    page.get_by_text("false", exact=True).dblclick()  # the default the Launchpad fills in
    page.keyboard.type("true")
    page.get_by_text("No errors").wait_for()
    screenshot(page, folder / "dagster_refresh_launchpad.png")
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/**")
    logged = page.get_by_text("submitted backfill").first
    logged.wait_for(timeout=120_000)
    return logged.inner_text().split()[2]


def watch_the_backfill(page, url: str, backfill_id: str, folder: Path) -> None:
    page.goto(f"{url}/runs/b/{backfill_id}")
    page.get_by_text("retrieval_eval").first.wait_for()
    page.wait_for_timeout(3000)
    screenshot(page, folder / "dagster_refresh_backfill.png")


def materialization_count(instance: dg.DagsterInstance, asset: str) -> int:
    return len(instance.fetch_materializations(key_of(asset), limit=1000).records)


@pytest.fixture
def server_project(mini_corpus, tmp_path):
    """A project folder, its instance (the committed dagster.yaml) and the graph run once."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARS}
    prompts = tmp_path / "prompts.toml"
    prompts.write_text("# prompt overrides (none yet): rar prompts prints what to start from\n")
    env |= {
        "RAR_PROMPTS": str(prompts),
        "DAGSTER_HOME": str(home),
        "RAR_PROJECT_DIR": str(tmp_path),
        "RAR_DATA_ROOT": str(mini_corpus),
        "RAR_EPOCHS": "2",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    (tmp_path / "workspace.yaml").write_text(
        f"load_from:\n  - python_module:\n      module_name: rar_pipeline.definitions\n"
        f"      location_name: {LOCATION}\n      working_directory: {tmp_path}\n"
    )
    subprocess.run(
        [sys.executable, "-m", "rar_pipeline.cli", "run", "--data", str(mini_corpus)],
        env=env, cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    return tmp_path, env


@pytest.fixture
def dagster_dev(server_project):
    """`dagster dev` on a free port of 127.0.0.1, stopped with its whole process group."""
    folder, env = server_project
    port = free_port()
    gql = GraphQL(f"http://127.0.0.1:{port}")
    command = [str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1",
               "-p", str(port), "-w", str(folder / "workspace.yaml")]  # fmt: skip
    with server_process(command, lambda: bool(gql(STALE)["assetNodes"]), env=env,
                        log=folder / "dagster_dev.log", cwd=folder):  # fmt: skip
        yield folder, gql, gql.url


def test_a_prompt_edit_is_refreshed_in_one_click_in_the_ui(dagster_dev, mini_corpus):
    folder, gql, url = dagster_dev
    executable = chromium()  # skipped without a browser, except in CI
    before = stale_statuses(gql)
    materialized = {a: p for a, p in before.items() if not a.startswith("demo_")}
    assert all(s == "FRESH" for p in materialized.values() for s in p.values()), before
    instance = dg.DagsterInstance.from_config(str(folder / "dagster_home"))
    untouched = ["enhanced_queries", "lancedb_index_none", "lancedb_index_query",
                 "training_pairs_none", "retriever_checkpoint_none"]  # fmt: skip
    refreshed = ["corpus_captions", "enhanced_corpus", "retrieval_eval",
                 *(f"{p}_{c}" for p in ("training_pairs", "retriever_checkpoint",
                                        "lancedb_index") for c in ("corpus", "full")),
                 "lancedb_index_inference_only"]  # fmt: skip
    counts = {asset: materialization_count(instance, asset) for asset in untouched + refreshed}

    # edit the corpus caption prompt in the prompts file, then reload in the UI
    system = prompts.PROMPTS["corpus_caption"].system + " Name materials."
    (folder / "prompts.toml").write_text(f"[corpus_caption]\nsystem = {json.dumps(system)}\n")
    with browser_page(executable, width=1400, height=900) as page:
        reload_in_the_ui(page, url)
        deadline = time.monotonic() + 60
        while not reloaded(after := stale_statuses(gql)):
            assert time.monotonic() < deadline, f"the reload did not take: {after}"
            time.sleep(1)
        shards = sorted(after["corpus_captions"])
        assert set(after["enhanced_corpus"].values()) == {"STALE"}
        assert set(after["enhanced_queries"].values()) == {"FRESH"}
        for config in ("none", "query"):
            assert after[f"lancedb_index_{config}"] == {None: "FRESH"}
        for config in ("corpus", "full", "inference_only"):
            assert after[f"lancedb_index_{config}"] == {None: "STALE"}

        # the drift sensor's current_version checks fail on what the edit made outdated,
        # naming the partitions and the prompt, and pass where nothing changed
        run_id, captions = await_drift_check(instance, "corpus_captions", passed=False)
        await_run(instance, run_id)
        assert captions["outdated"] == len(shards)
        assert captions["outdated_partitions"] == ", ".join(shards)
        changed = captions["changed_prompts"]
        assert changed.startswith(f"corpus_caption ({folder / 'prompts.toml'}:1): ")
        assert not drift_check_in_run(instance, "lancedb_index_full", run_id)
        assert drift_check_in_run(instance, "enhanced_queries", run_id)
        assert drift_check_in_run(instance, "lancedb_index_none", run_id)
        look_at_the_failed_check(page, url, folder, shards)

        # the one action: the refresh job, retraining included
        backfill_id = launch_refresh_in_the_ui(page, url, folder)
        deadline = time.monotonic() + 540
        while True:
            status = gql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]
            if status.get("status") in ("COMPLETED", "COMPLETED_SUCCESS", "FAILED", "CANCELED",
                                         "COMPLETED_FAILED"):  # fmt: skip
                break
            assert time.monotonic() < deadline, f"backfill still {status}"
            time.sleep(2)
        assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
        watch_the_backfill(page, url, backfill_id, folder)

    # only the captioned items went to the VLM: every image item again, nothing from cache
    for shard in shards:
        meta = latest_metadata(instance, "corpus_captions", shard)
        images = meta["items"] - meta["items_by_type"].get("text", 0)
        assert meta["backend_calls"] == images and meta["cache_hits"] == 0, (shard, meta)
    # every asset fresh; each shard once, each index and the evaluation once
    final = stale_statuses(gql)
    assert all(v == "FRESH" for a, p in final.items() if not a.startswith("demo_")
               for v in p.values()), final  # fmt: skip
    once = {a: (len(shards) if a in ("corpus_captions", "enhanced_corpus") else 1)
            for a in refreshed}  # fmt: skip
    assert {a: materialization_count(instance, a) - counts[a] for a in refreshed} == once
    for asset in ("corpus_captions", "lancedb_index_full", "retrieval_eval"):
        await_drift_check(instance, asset, passed=True)
    # the none and query configs, and the queries, were never recomputed
    assert {a: materialization_count(instance, a) for a in untouched} == {
        a: counts[a] for a in untouched
    }
