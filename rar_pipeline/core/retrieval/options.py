"""Names and options of the retriever stage, free of heavy imports (settings read them).

`ENCODERS` names the backbones `encoders.factory` builds, `TRAINED` what training may
update, `TrainOptions` how the trainer (`train.py`) runs.
"""

from __future__ import annotations

from dataclasses import dataclass

# name -> "module:class"; each class has `__init__(**options)` and
# `load(directory, *, cache_dir=None)`. Imported lazily: torch-heavy modules load on use.
ENCODERS: dict[str, str] = {
    "offline": "rar_pipeline.core.retrieval.encoders.offline:OfflineEncoder",
    "clip": "rar_pipeline.core.retrieval.encoders.clip:ClipEncoder",
    "vlm-embed": "rar_pipeline.core.retrieval.encoders.vlm_embed:VlmEmbedEncoder",
}
# What training updates: the projection heads only (the CPU default), the whole backbone,
# or LoRA adapters on the backbone's linear layers (heads train in every mode).
TRAINED: tuple[str, ...] = ("heads", "full", "lora")


@dataclass(frozen=True)
class TrainOptions:
    """How a retriever is trained (every field is logged as an MLflow param).

    Attributes:
        epochs: at most this many passes over the train queries.
        max_steps: at most this many optimiser steps (0: no limit besides epochs).
        batch_size: queries per micro-batch (each brings its positive and negatives).
        grad_accum: micro-batches per optimiser step.
        lr: Adam's learning rate.
        temperature: InfoNCE temperature (the start value when learnable).
        learn_temperature: train the temperature too.
        hard_negatives: negatives per query from the corpus' `neg_cand_list`.
        batch_by_pool: each batch holds queries of one pool, so in-batch negatives are
            candidates of the pool the query is ranked against; False (the default) mixes
            pools and tasks, as UniIR's union training does. On the demo, mixed batches
            reached validation Recall@1 0.82 (none) where pool batches reached 0.46
            (benchmarks/RESULTS.md).
        mined_negatives: negatives per query mined with the retriever being trained, once
            per epoch (0: none).
        checkpoint_every: optimiser steps between saves of the resumable state.
        recall_k: validation Recall@k drives early stopping and the best checkpoint.
        patience: epochs without a better validation recall before stopping.
        seed: batch order, drawn positives and negatives.
    """

    epochs: int = 60
    max_steps: int = 0
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    temperature: float = 0.05
    learn_temperature: bool = False
    hard_negatives: int = 1
    batch_by_pool: bool = False
    mined_negatives: int = 0
    checkpoint_every: int = 50
    recall_k: int = 1
    patience: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "checkpoint_every", "recall_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
