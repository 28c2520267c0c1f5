"""The MLflow UI on a project after `rar demo`, in headless Chromium (tests/browser.py).

MLflow 3.17's UI opens an experiment in the mode of its "GenAI / Model training" switch: a
fresh browser is in GenAI mode and lands on the traces overview, whatever the experiment's
`mlflow.experimentKind` tag says. The links the pipeline hands out (`run_url`,
`experiment_url`) carry `workflowType=machine_learning`, so they open on the runs, where a
training run shows the pairs it was trained on (its dataset input) and its checkpoint (the
logged model it output, registered). The screenshot is the README's
(docs/images/mlflow_runs.png, through RAR_SCREENSHOT_DIR).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rar_pipeline.defs.resources import MlflowResource
from rar_pipeline.defs.resources.tracking_rules import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from rar_pipeline.stack.processes import free_port, server_process
from tests.browser import browser_page, chromium, screenshot

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_ui(demo_project, tmp_path):
    """`mlflow server` on a copy of the demo project's store (the session's stays as it is).

    Returns the UI's address and the copy's tracking URI.
    """
    for path in (demo_project.root / "mlruns").glob("mlflow.db*"):  # with a WAL, if any
        shutil.copy(path, tmp_path / path.name)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job workers
    }

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200

    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--backend-store-uri", store]  # fmt: skip
    with server_process(command, ready, env=env, log=tmp_path / "mlflow.log", cwd=tmp_path):
        yield url, store


ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'


def close_the_assistant(page) -> None:
    """Close MLflow 3.17's Assistant panel whenever it shows (it opens itself on a browser's
    first visit). No dialog, and its button's name ("Close") is too common for
    `FIRST_VISIT_DIALOGS`: it is found by its component id."""
    page.add_locator_handler(page.locator(ASSISTANT_CLOSE), lambda found: found.click())


def test_a_link_opens_the_experiments_runs_with_their_datasets_and_models(
    demo_project, mlflow_ui, tmp_path
):
    executable = chromium()
    url, store = mlflow_ui
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("rar_pipeline")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    (train,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'train-demo-full'"
    )
    (pairs,) = train.inputs.dataset_inputs
    (output,) = train.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    (version,) = json.loads(model.tags["mlflow.modelVersions"])  # how the UI finds it
    # the link the resource hands out for this server (it reads nothing from the store)
    resource = MlflowResource(tracking_uri=store, artifact_location=str(tmp_path), ui_url=url)
    link = resource.experiment_url(experiment.experiment_id)

    with browser_page(executable, width=1600, height=900) as page:
        close_the_assistant(page)
        page.goto(link)
        # ag-grid draws a row in parts (pinned and scrolled columns): its cells by column id
        row = page.locator(f'[role="row"][row-id="{train.info.run_id}"]')
        row.first.wait_for()
        assert f"/experiments/{experiment.experiment_id}/runs?" in page.url
        assert "workflowType=machine_learning" in page.url  # the model-training mode
        dataset = row.locator('[col-id="attributes.`Dataset`"]')
        dataset.get_by_text(f"{pairs.dataset.name} ({pairs.dataset.digest})").wait_for()
        dataset.get_by_text("training", exact=True).wait_for()  # its mlflow.data.context
        models = row.locator('[col-id="attributes.`Models`"]')
        registered = f"#/models/{version['name']}/versions/{version['version']}"
        models.locator(f'a[href="{registered}"]').wait_for()
        page.wait_for_timeout(1000)  # the grid's last layout pass
        if page.locator(ASSISTANT_CLOSE).is_visible():  # opened after the last wait
            page.locator(ASSISTANT_CLOSE).click()
        screenshot(page, tmp_path / "mlflow_runs.png")
