"""The Celery app a worker runs: `celery -A rar_pipeline.stack.celery_app worker -Q vlm`.

`rar worker` starts it. It is `dagster_celery`'s app, built from the same settings as the
executor that sends it steps (`defs.executor.celery_config`): the broker and backend URLs
from `RAR_CELERY_BROKER_URL` / `RAR_CELERY_BACKEND_URL`, and the task settings both sides
must share. A step it receives names its run: the worker loads the instance from the run
(`deploy/dagster.yaml`'s PostgreSQL) and the code from this installed package.

A worker lives longer than a prompt: the module of the step's code location
(`rar_pipeline.definitions`, or a `rar ui` workspace file) is loaded anew for every step
(~0.1 s once the package is imported), so a step run after an
edit of the prompts file (`RAR_PROMPTS`) records the code versions of the prompts it ran
with, as a step run in a fresh process does. A long-lived process would otherwise keep the
versions it computed at its first step, and the edited assets would stay stale after
their recomputation.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery.signals import task_prerun
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.executor import celery_config

_cluster = load_settings().cluster
if not _cluster.on_workers:
    raise RuntimeError("a worker needs RAR_CELERY_BROKER_URL (the broker the runs send steps to)")
app = make_app(CeleryExecutor.for_cli(**celery_config(_cluster)).app_args())
execute_plan = create_task(app)


@task_prerun.connect(sender=execute_plan)
def _fresh_definitions(kwargs: dict, **_: Any) -> None:
    """Before each step: its code location's module is to be loaded again, from today's files."""
    pointer = ReconstructableJob.from_dict(kwargs["executable_dict"]).repository.pointer
    module, path = getattr(pointer, "module", None), getattr(pointer, "python_file", None)
    if path:
        path = os.path.abspath(os.path.join(getattr(pointer, "working_directory", "") or "", path))
    for name, loaded in list(sys.modules.items()):
        if name == module or (path and getattr(loaded, "__file__", None) == path):
            del sys.modules[name]
