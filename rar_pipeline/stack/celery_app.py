"""The Celery app a worker runs: `celery -A rar_pipeline.stack.celery_app worker -Q vlm`.

`rar worker` starts it. It is `dagster_celery`'s app, built from the same settings as the
executor that sends it steps (`defs.executor.celery_config`): the broker and backend URLs
from `RAR_CELERY_BROKER_URL` / `RAR_CELERY_BACKEND_URL`, and the task settings both sides
must share. A step it receives names its run: the worker loads the instance from the run
(`deploy/dagster.yaml`'s PostgreSQL) and the code from this installed package.
"""

from __future__ import annotations

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
