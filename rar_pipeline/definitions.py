"""The one `Definitions` of the project, loaded by workspace.yaml and `dagster dev`.

Locations come from the environment (see `core.settings`): by default the demo corpus in
data/demo, outputs in artifacts/, MLflow in mlruns/, all under the working directory.
"""

from __future__ import annotations

import dagster as dg

from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.assets.corpus import candidate_pool, demo_corpus, queries
from rar_pipeline.defs.jobs import JOBS
from rar_pipeline.defs.resources import default_resources
from rar_pipeline.defs.schedules import nightly_pool_revalidation
from rar_pipeline.defs.sensors import corpus_files_sensor

ASSETS = [demo_corpus, candidate_pool, queries]


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """The project's definitions; `resources` replaces the env-derived real ones."""
    return dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        sensors=[corpus_files_sensor],
        schedules=[nightly_pool_revalidation],
        resources=resources if resources is not None else default_resources(load_settings()),
    )


defs = build_definitions()
