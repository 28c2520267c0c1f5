"""`RetrieverResource`: the retriever backbone and how it is trained.

Its fields are `core.retrieval.options.RetrieverConfig`'s and, under `training`,
`TrainOptions`': declared there, inherited here. `code_version` covers every field that
changes what a checkpoint holds, so a new backbone or learning rate stales the checkpoints
(and what reads them) while a new checkpoint interval does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.files import values_hash
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.retrieval.checkpoint import open_retriever
from rar_pipeline.core.retrieval.encoders.base import TrainableEncoder
from rar_pipeline.core.retrieval.encoders.factory import create_encoder
from rar_pipeline.core.retrieval.options import RetrieverConfig, TrainOptions
from rar_pipeline.core.retrieval.train import TRAINER_VERSION

# fields that change nothing a checkpoint holds: left out of the code version
_NOT_VERSIONED = {"checkpoint_every", "device"}


class TrainingSection(dg.Config, TrainOptions):
    """How the retriever is trained (see `TrainOptions`)."""


class RetrieverResource(dg.ConfigurableResource, RetrieverConfig):
    """The retriever's backbone (`RetrieverConfig`) and its training (`training`)."""

    training: TrainingSection = TrainingSection()

    @classmethod
    def of(cls, retriever: RetrieverConfig, training: TrainOptions) -> RetrieverResource:
        """The resource for a backbone and training options (`resources_from_settings`)."""
        return cls(**retriever.model_dump(), training=training.model_dump())

    def options(self) -> TrainOptions:
        """The training options."""
        return TrainOptions.model_validate(self.training.model_dump())

    def backbone(self) -> dict[str, Any]:
        """The encoder's settings, as `create_encoder` takes them."""
        options: dict[str, Any] = {
            "dim": self.dim,
            "seed": self.training.seed,
            "trained": self.trained,
        }
        if self.encoder != "offline":
            if not self.model:
                raise ValueError(f"the {self.encoder} encoder needs a model id (--encoder-model)")
            options |= {
                "model": self.model,
                "device": self.device,
                "trust_remote_code": self.trust_remote_code,
            }
        return options

    def create(self, cache_dir: Path | CacheRoot | None = None) -> TrainableEncoder:
        """A fresh encoder to train (frozen backbone features cached under `cache_dir`)."""
        return create_encoder(self.encoder, cache_dir=cache_dir, **self.backbone())

    def open(self, paths: ArtifactLayout, config: str) -> tuple[TrainableEncoder, str, Any]:
        """A config's trained retriever from its checkpoint, or this untrained base one.

        Returns:
            As `core.retrieval.checkpoint.open_retriever`: (encoder, reference, manifest).

        Raises:
            CheckpointError: the checkpoint is damaged (never loaded).
        """
        cache = paths.perception_cache
        return open_retriever(paths.checkpoint(config), config, lambda: self.create(cache), cache)

    def params(self) -> dict[str, Any]:
        """Every field, for MLflow params and checkpoint manifests."""
        return {"encoder": self.encoder, **self.backbone(), **self.options().model_dump()}

    def code_version(self) -> str:
        """Changes whenever a checkpoint trained with these fields would change."""
        flat = {**self.model_dump(exclude={"training"}), **self.training.model_dump()}
        fields_ = {k: v for k, v in flat.items() if k not in _NOT_VERSIONED}
        return f"{TRAINER_VERSION}-{values_hash([json.dumps(fields_, sort_keys=True)])}"
