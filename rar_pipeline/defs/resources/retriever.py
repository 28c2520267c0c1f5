"""`RetrieverResource`: the retriever backbone and how it is trained.

Its fields are the encoder's settings and `TrainOptions`' fields, with the defaults that
dataclass defines (a test keeps the two in step). `code_version` covers every field that
changes what a checkpoint holds, so a new backbone or learning rate stales the checkpoints
(and what reads them) while a new checkpoint interval does not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import dagster as dg

from rar_pipeline.core.files import values_hash
from rar_pipeline.core.retrieval.encoders.base import TrainableEncoder
from rar_pipeline.core.retrieval.encoders.factory import create_encoder
from rar_pipeline.core.retrieval.options import TrainOptions
from rar_pipeline.core.retrieval.train import TRAINER_VERSION
from rar_pipeline.core.settings import Settings

DEFAULT_TRAINING = TrainOptions()
# fields that change nothing a checkpoint holds: left out of the code version
_NOT_VERSIONED = {"checkpoint_every", "device"}


class RetrieverResource(dg.ConfigurableResource):
    """The retriever: backbone (encoder, model, trained, dim, device) and training options.

    Backbone: encoder (offline | clip | vlm-embed), model (a Hugging Face id or local path
    for clip and vlm-embed; unused by offline), trained (heads | full | lora), dim, device,
    trust_remote_code. Training (see `core.retrieval.options.TrainOptions` for each): epochs,
    max_steps, batch_size, grad_accum, lr, temperature, learn_temperature, hard_negatives,
    batch_by_pool, mined_negatives, checkpoint_every, recall_k, patience, seed.
    """

    encoder: str = "offline"
    model: str = ""
    trained: str = "heads"
    dim: int = 256
    device: str = "cpu"
    trust_remote_code: bool = False

    epochs: int = DEFAULT_TRAINING.epochs
    max_steps: int = DEFAULT_TRAINING.max_steps
    batch_size: int = DEFAULT_TRAINING.batch_size
    grad_accum: int = DEFAULT_TRAINING.grad_accum
    lr: float = DEFAULT_TRAINING.lr
    temperature: float = DEFAULT_TRAINING.temperature
    learn_temperature: bool = DEFAULT_TRAINING.learn_temperature
    hard_negatives: int = DEFAULT_TRAINING.hard_negatives
    batch_by_pool: bool = DEFAULT_TRAINING.batch_by_pool
    mined_negatives: int = DEFAULT_TRAINING.mined_negatives
    checkpoint_every: int = DEFAULT_TRAINING.checkpoint_every
    recall_k: int = DEFAULT_TRAINING.recall_k
    patience: int = DEFAULT_TRAINING.patience
    seed: int = DEFAULT_TRAINING.seed

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrieverResource:
        """The resource for resolved settings (flags > environment > defaults)."""
        return cls(
            encoder=settings.retriever_encoder,
            model=settings.retriever_model,
            trained=settings.retriever_trained,
            device=settings.retriever_device,
            epochs=settings.train_epochs,
            max_steps=settings.train_max_steps,
            batch_size=settings.train_batch_size,
            lr=settings.train_lr,
            mined_negatives=settings.mined_negatives,
        )

    def options(self) -> TrainOptions:
        """The training options these fields describe."""
        return TrainOptions(**{f.name: getattr(self, f.name) for f in fields(TrainOptions)})

    def backbone(self) -> dict[str, Any]:
        """The encoder's settings, as `create_encoder` takes them."""
        options: dict[str, Any] = {"dim": self.dim, "seed": self.seed, "trained": self.trained}
        if self.encoder != "offline":
            if not self.model:
                raise ValueError(f"the {self.encoder} encoder needs a model id (--encoder-model)")
            options |= {
                "model": self.model,
                "device": self.device,
                "trust_remote_code": self.trust_remote_code,
            }
        return options

    def create(self, cache_dir: Path | None = None) -> TrainableEncoder:
        """A fresh encoder to train (frozen backbone features cached under `cache_dir`)."""
        return create_encoder(self.encoder, cache_dir=cache_dir, **self.backbone())

    def params(self) -> dict[str, Any]:
        """Every field, for MLflow params and checkpoint manifests."""
        return {"encoder": self.encoder, **self.backbone(), **asdict(self.options())}

    def code_version(self) -> str:
        """Changes whenever a checkpoint trained with these fields would change."""
        fields_ = {k: v for k, v in self.model_dump().items() if k not in _NOT_VERSIONED}
        return f"{TRAINER_VERSION}-{values_hash([json.dumps(fields_, sort_keys=True)])}"
