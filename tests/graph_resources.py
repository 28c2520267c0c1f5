"""Resources for running the whole graph in tests: a small retriever, an in-memory MLflow,
real LanceDB in the corpus' artifacts folder."""

from __future__ import annotations

from typing import Any

from rar_pipeline.defs.resources import (
    CorpusResource,
    LanceDBResource,
    RetrieverResource,
    VLMResource,
)
from tests.fake_mlflow import FakeMlflow
from tests.fake_vlm import FakeVLMResource

# a real offline retriever, small and short: the graph's tests check wiring, not recall
SMALL_RETRIEVER = RetrieverResource(dim=16, training={"epochs": 2, "batch_size": 16, "patience": 1})


def graph_assets(vlm: VLMResource | None = None) -> list:
    """The graph as `graph_resources` runs it: its versions made from the same resources."""
    from rar_pipeline.definitions import build_assets

    return build_assets(vlm if vlm is not None else FakeVLMResource(), SMALL_RETRIEVER)


def graph_resources(corpus: CorpusResource, vlm: VLMResource | None = None) -> dict[str, Any]:
    """Every resource the graph needs, with `corpus`, a fake VLM unless given, a fake MLflow."""
    return {
        "corpus": corpus,
        "vlm": vlm if vlm is not None else FakeVLMResource(),
        "retriever": SMALL_RETRIEVER,
        "mlflow": FakeMlflow(),
        "lancedb": LanceDBResource(uri=str(corpus.artifacts().lancedb)),
    }
