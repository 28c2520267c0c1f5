"""One resource per external system, each with a real and a fake implementation.

| module    | real                | fake                   | system                            |
|-----------|---------------------|------------------------|-----------------------------------|
| corpus    | `CorpusResource`    | (itself, on temp dirs) | the data root and artifacts folder |
| vlm       | `VLMResource`       | `tests/fake_vlm.py`    | the VLM backend that enhances items |
| retriever | `RetrieverResource` | (itself, tiny settings) | the retriever backbone, training  |
| lancedb   | `LanceDBResource`   | `tests/fake_stores.py` | vector tables                     |
| mlflow    | `MlflowResource`    | `tests/fake_mlflow.py` | run tracking                      |

`resources_from_settings` builds the real ones; `definitions.py` binds them, tests pass
fakes or real ones on temp dirs.
"""

from __future__ import annotations

from typing import Any

from rar_pipeline.core.settings import Settings
from rar_pipeline.defs.resources.corpus import CorpusResource
from rar_pipeline.defs.resources.lancedb import LanceDBResource
from rar_pipeline.defs.resources.mlflow import MlflowResource
from rar_pipeline.defs.resources.retriever import RetrieverResource
from rar_pipeline.defs.resources.vlm import VLMResource

__all__ = [
    "CorpusResource",
    "LanceDBResource",
    "MlflowResource",
    "RetrieverResource",
    "VLMResource",
    "resources_from_settings",
]


def resources_from_settings(settings: Settings) -> dict[str, Any]:
    """The real resources for resolved settings, by resource key."""
    return {
        "corpus": CorpusResource(
            **settings.corpus.model_dump(),
            s3_endpoint_url=settings.storage.s3_endpoint_url,
            s3_region=settings.storage.s3_region,
        ),
        "lancedb": LanceDBResource(
            uri=settings.storage.lancedb_uri,
            s3_endpoint_url=settings.storage.s3_endpoint_url,
            s3_region=settings.storage.s3_region,
            single_writer=settings.storage.lancedb_single_writer,
            maintenance=settings.index.model_dump(),
        ),
        "mlflow": MlflowResource(
            tracking_uri=settings.storage.mlflow_tracking_uri,
            artifact_location=settings.storage.mlflow_artifacts,
            journal_dir=str(settings.corpus.artifacts().tracking_journal),
        ),
        "vlm": VLMResource.of(settings.vlm, settings.enhance),
        "retriever": RetrieverResource.of(settings.retriever, settings.training),
    }
