"""The retriever stage's settings, free of heavy imports (settings read them).

`ENCODERS` names the backbones `encoders.factory` builds, `TRAINED` what training may
update, `RetrieverConfig` the backbone, `TrainOptions` how the trainer (`train.py`) runs.
"""

from __future__ import annotations

from pydantic import ValidationInfo, field_validator

from rar_pipeline.core.config import Section, setting

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


class RetrieverConfig(Section):
    """The retriever's backbone: which encoder, which weights, what training updates."""

    encoder: str = setting(
        "offline", "the retriever's backbone: " + " | ".join(ENCODERS), env="RAR_ENCODER",
        flag="--encoder",
    )  # fmt: skip
    model: str = setting(
        "", "clip / vlm-embed: a Hugging Face model id or local folder (e.g. "
        "openai/clip-vit-base-patch32, Qwen/Qwen2-VL-2B-Instruct)", env="RAR_ENCODER_MODEL",
        flag="--encoder-model",
    )  # fmt: skip
    trained: str = setting(
        "heads", "what training updates: heads (projections only, the CPU default) | full | "
        "lora", env="RAR_TRAINED", flag="--trained",
    )  # fmt: skip
    dim: int = setting(256, "the embedding size the heads project to", ge=2, le=8192)
    device: str = setting(
        "cpu", "clip / vlm-embed: cpu | cuda", env="RAR_ENCODER_DEVICE", flag="--encoder-device"
    )
    trust_remote_code: bool = setting(
        False, "clip / vlm-embed: run the model repository's own code (off unless asked for)"
    )

    @field_validator("encoder", "trained")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        known = ENCODERS if info.field_name == "encoder" else TRAINED
        if value not in known:
            raise ValueError(f"unknown {info.field_name} {value!r}; choose one of "
                             f"{', '.join(known)}")  # fmt: skip
        return value


class TrainOptions(Section):
    """How a retriever is trained (every field is logged as an MLflow param).

    `batch_by_pool`: each batch holds queries of one pool, so in-batch negatives are
    candidates of the pool the query is ranked against; off (the default), batches mix
    pools and tasks as UniIR's union training does. On the demo, mixed batches reached
    validation Recall@1 0.82 (none) where pool batches reached 0.46 (benchmarks/RESULTS.md).
    """

    epochs: int = setting(
        60, "at most this many passes over the train queries (early stopping on validation "
        "recall ends most runs sooner)", env="RAR_EPOCHS", flag="--epochs", ge=1, le=100_000,
    )  # fmt: skip
    max_steps: int = setting(
        0, "at most this many optimiser steps (0: no limit)", env="RAR_MAX_STEPS",
        flag="--max-steps", ge=0, le=10**9,
    )  # fmt: skip
    batch_size: int = setting(
        64, "queries per micro-batch (each brings its positive and negatives)",
        env="RAR_BATCH_SIZE", flag="--batch-size", ge=1, le=65_536,
    )  # fmt: skip
    grad_accum: int = setting(1, "micro-batches per optimiser step", ge=1, le=4096)
    lr: float = setting(1e-3, "Adam's learning rate", env="RAR_LR", flag="--lr", ge=0, le=10)
    temperature: float = setting(
        0.05, "InfoNCE temperature (the start value when learnable)", gt=0, le=10
    )
    learn_temperature: bool = setting(False, "train the temperature too")
    hard_negatives: int = setting(
        1, "negatives per query from the corpus' neg_cand_list", ge=0, le=1000
    )
    batch_by_pool: bool = setting(False, "each batch holds queries of one pool")
    mined_negatives: int = setting(
        0, "negatives per query mined with the retriever being trained, each epoch (0: none)",
        env="RAR_MINED_NEGATIVES", flag="--mined-negatives", ge=0, le=1000,
    )  # fmt: skip
    checkpoint_every: int = setting(
        50, "optimiser steps between saves of the resumable state", ge=1
    )
    recall_k: int = setting(
        1, "validation Recall@k drives early stopping and the best checkpoint", ge=1, le=1000
    )
    patience: int = setting(
        8, "epochs without a better validation recall before stopping", ge=1, le=10_000
    )
    seed: int = setting(0, "batch order, drawn positives and negatives", ge=0)
