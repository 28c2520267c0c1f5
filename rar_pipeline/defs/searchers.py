"""Searchers opened from the resources a pipeline run uses: what `rar search` and `rar serve` run.

The VLM, its options and cache, the retriever checkpoints and the LanceDB tables are the
ones the run that built the index used (`resources_from_settings`), so a search query is
enhanced and embedded exactly as that run's test queries were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rar_pipeline.core.index.ann import DEFAULT_PLAN, AnnPlan
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.retrieval.checkpoint import CheckpointError
from rar_pipeline.core.retrieval.encoders.base import Encoder
from rar_pipeline.core.search.enhance import QueryEnhancer
from rar_pipeline.core.search.query import IndexUnavailable, SearchError
from rar_pipeline.core.search.searcher import Searcher
from rar_pipeline.core.settings import Settings
from rar_pipeline.defs.resources import resources_from_settings


class Searchers:
    """A `Searcher` per config, opened on first use and kept: models load once.

    Configs that share a retriever (`none` and `inference-only`) share its encoder, and
    every config shares one VLM and cache.

    Args:
        resources: the pipeline's resources by key (corpus, vlm, retriever, lancedb).
        plan: the tables' ANN query parameters.
    """

    def __init__(self, resources: dict[str, Any], plan: AnnPlan = DEFAULT_PLAN) -> None:
        corpus, vlm = resources["corpus"], resources["vlm"]
        self.paths = corpus.artifacts()
        self.data_root: Path = corpus.root
        self.strict_paths: bool = corpus.strict_paths
        self.store = resources["lancedb"]
        self.retriever = resources["retriever"]
        self.plan = plan
        self.enhancer = QueryEnhancer(
            lambda: vlm.create(self.paths), self.paths.caches, vlm.options()
        )
        self._encoders: dict[str, tuple[Encoder, str]] = {}
        self._searchers: dict[str, Searcher] = {}
        self.loads = 0  # encoders loaded (tests check a server never reloads them)

    @classmethod
    def from_settings(cls, settings: Settings) -> Searchers:
        return cls(resources_from_settings(settings))

    @property
    def uploads(self) -> Path:
        return self.paths.search_uploads

    def get(self, config: str) -> Searcher:
        """The config's searcher.

        Raises:
            SearchError: an unknown config.
            IndexUnavailable: a damaged checkpoint, or no readable index table.
        """
        if config not in INDEXED:
            raise SearchError(f"unknown config {config!r}; choose one of {', '.join(INDEXED)}")
        if config not in self._searchers:
            indexed = INDEXED[config]
            encoder, reference = self._encoder(indexed.retriever.name)
            self._searchers[config] = Searcher(
                indexed, encoder, reference, self.store, self.enhancer, self.plan
            )
        return self._searchers[config]

    def open(self, config: str) -> Searcher:
        """The config's searcher with everything a query touches loaded (models, caches).

        Models that load lazily (the offline encoder's and VLM's shipped ones) have a
        `preload` method: it runs now, so no query pays for it.
        """
        searcher = self.get(config)
        models: list[object] = [searcher.encoder]
        if searcher.config.representation.enhanced_queries:
            self.enhancer.open()
            models.append(self.enhancer.vlm)
        for model in models:
            if callable(preload := getattr(model, "preload", None)):
                preload()
        return searcher

    def _encoder(self, name: str) -> tuple[Encoder, str]:
        if name not in self._encoders:
            try:
                encoder, reference, _ = self.retriever.open(self.paths, name)
            except CheckpointError as exc:
                asset = INDEXED[name].checkpoint_asset
                raise IndexUnavailable(f"the {name} checkpoint is damaged ({exc})", asset) from exc
            self._encoders[name] = (encoder, reference)
            self.loads += 1
        return self._encoders[name]
