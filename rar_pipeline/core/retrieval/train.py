"""Contrastive training of a retriever: InfoNCE over in-batch and hard negatives.

One epoch visits every train query once, with one of its positives drawn (seeded) for that
epoch, so a query with many positives does not dominate. A batch holds `batch_size`
queries, their drawn positives and up to `hard_negatives` negatives each (the corpus' own,
then mined ones); in-batch candidates that are labelled positives of a query other than its
target are masked out of its softmax (`losses.false_negative_mask`); the loss
(`losses.InfoNCELoss`) owns the temperature, learnt or not.

Seeded and deterministic on CPU. The loop saves its whole state (encoder, best encoder,
optimiser, RNG, position) every `checkpoint_every` optimiser steps; a run started again
with the same options and data resumes from there and ends with the same weights as an
uninterrupted one. Validation Recall@k (UniIR's: any positive in the top k, ranked against
the query's own pool) runs after every epoch; training stops after `patience` epochs
without improvement and keeps the best encoder.

Two parts: `EpochLoop` runs one epoch (mining, the seeded plan, optimiser steps with
gradient accumulation, step observers, periodic saves) and validates it (best weights,
patience); `train_retriever` is the driver around it (resume, stopping, the result).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rar_pipeline.core.files import values_hash
from rar_pipeline.core.retrieval.checkpoint import LoopPosition, load_state, save_state
from rar_pipeline.core.retrieval.data import TrainingData, TrainQuery
from rar_pipeline.core.retrieval.encoders.base import TrainableEncoder
from rar_pipeline.core.retrieval.mining import mine_train_negatives
from rar_pipeline.core.retrieval.options import TrainOptions
from rar_pipeline.core.retrieval.validation import validation_recall

if TYPE_CHECKING:  # losses imports torch: loaded when training starts, not with the assets
    from rar_pipeline.core.retrieval.losses import InfoNCELoss

TRAINER_VERSION = "trainer-1"  # bump when the loop's rules change: part of asset versions

# One micro-batch: (query, its drawn positive, its negatives) per query.
Batch = list[tuple[TrainQuery, str, list[str]]]


@dataclass
class TrainResult:
    """What a training run produced."""

    encoder: TrainableEncoder  # the trained encoder, holding its best weights (by validation)
    best_recall: float
    best_epoch: int
    epochs: int
    steps: int
    stopped: str
    resumed_from_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    recall_k: int = 1
    signature: str = ""  # `run_signature` of this run

    @classmethod
    def ended_at(
        cls, encoder: TrainableEncoder, position: LoopPosition, resumed_from: int, recall_k: int
    ) -> TrainResult:
        """The result of a run whose loop ended at `position`."""
        p = position
        return cls(
            encoder, p.best_recall, p.best_epoch, p.epoch, p.step, p.stopped, resumed_from,
            p.history, recall_k, p.signature,
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The run's results as flat values (asset metadata, checkpoint manifest)."""
        return {
            f"best_val_recall_at_{self.recall_k}": self.best_recall,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "steps": self.steps,
            "stopped": self.stopped,
            "resumed_from_step": self.resumed_from_step,
        }


# event name ("step" | "eval"), optimiser step, metrics
Observer = Callable[[str, int, dict[str, float]], None]


def _epoch_plan(
    data: TrainingData, options: TrainOptions, epoch: int, mined: dict[str, list[str]]
) -> list[Batch]:
    """This epoch's batches: (query, drawn positive, negatives), the same on every run."""
    rng = np.random.default_rng([options.seed, epoch])
    order = rng.permutation(len(data.train))
    planned = []
    for index in order:
        q = data.train[int(index)]
        positive = q.positives[int(rng.integers(len(q.positives)))]
        pool = [d for d in q.negatives if d not in data.test_only]
        take = min(options.hard_negatives, len(pool))
        negatives = (
            [pool[int(j)] for j in rng.choice(len(pool), take, replace=False)] if take else []
        )
        negatives += [d for d in mined.get(q.qid, []) if d not in negatives]
        planned.append((q, positive, negatives))
    if not options.batch_by_pool:
        size = options.batch_size
        return [planned[i : i + size] for i in range(0, len(planned), size)]
    by_pool: dict[str, Batch] = {}
    for entry in planned:
        by_pool.setdefault(entry[0].pool, []).append(entry)
    batches = [
        group[i : i + options.batch_size]
        for _, group in sorted(by_pool.items())
        for i in range(0, len(group), options.batch_size)
    ]
    return [batches[int(i)] for i in rng.permutation(len(batches))]


def _batch_loss(
    loss: InfoNCELoss, batch: Batch, data: TrainingData, labelled: dict[str, frozenset[str]]
) -> Any:
    """The loss of one micro-batch, false negatives masked.

    Each query is trained towards its drawn positive, against every candidate of the batch
    (the positives, then the negatives).
    """
    import torch

    from rar_pipeline.core.retrieval.losses import false_negative_mask

    cand_ids = [positive for _, positive, _ in batch]
    cand_ids += [d for _, _, negatives in batch for d in negatives]
    targets = list(range(len(batch)))
    mask = false_negative_mask([labelled[q.qid] for q, _, _ in batch], cand_ids, targets)
    queries = [q.item for q, _, _ in batch]
    candidates = [data.candidates[d] for d in cand_ids]
    return loss(queries, candidates, torch.tensor(targets), mask)


def run_signature(encoder: TrainableEncoder, data: TrainingData, options: TrainOptions) -> str:
    """What a resumed run must share with the one it resumes."""
    return values_hash(
        [
            TRAINER_VERSION,
            json.dumps(options.model_dump(), sort_keys=True),
            json.dumps(encoder.config(), sort_keys=True),
            data.fingerprint(),
        ]
    )


@dataclass
class EpochLoop:
    """One training run's moving parts, and the epoch that moves them.

    `run_epoch` trains from `position.batch` to the epoch's end (or `max_steps`),
    `validate` scores it and keeps the best weights; `checkpoint` saves all of it, so a run
    started again resumes exactly here.
    """

    encoder: TrainableEncoder
    data: TrainingData
    options: TrainOptions
    loss: InfoNCELoss
    optimizer: Any  # Adam over the encoder's trainable parameters, then the loss's
    position: LoopPosition
    state_dir: Path
    observe: Observer | None = None
    best: dict[str, Any] | None = None  # the encoder's state dict at its best validation
    samples: int = 0
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.labelled = self.data.labelled()

    def checkpoint(self) -> None:
        """Save the whole state (weights, best, optimiser, temperature, RNG, position)."""
        weights = self.encoder.module.state_dict()
        extra = dict(self.loss.state_dict())
        save_state(self.state_dir, weights, self.best, self.optimizer, extra, self.position)

    def run_epoch(self) -> None:
        """The epoch's batches from `position.batch` on, `grad_accum` per optimiser step."""
        options, position = self.options, self.position
        if position.batch == 0 and options.mined_negatives:
            self.encoder.module.eval()
            position.mined = mine_train_negatives(self.encoder, self.data, options.mined_negatives)
        batches = _epoch_plan(self.data, options, position.epoch, position.mined)
        self.encoder.module.train()
        while position.batch < len(batches):
            group = batches[position.batch : position.batch + options.grad_accum]
            loss = self._step(group)
            position.batch += len(group)
            position.step += 1
            if self.observe:
                rate = self.samples / max(time.perf_counter() - self.started, 1e-9)
                temp = self.loss.learnt_temperature()
                metrics = {"loss": loss, "temperature": temp, "samples_per_s": rate}
                self.observe("step", position.step, metrics)
            if position.step % options.checkpoint_every == 0:
                self.checkpoint()
            if options.max_steps and position.step >= options.max_steps:
                position.batch = len(batches)  # the epoch ends here; validation follows

    def _step(self, group: list[Batch]) -> float:
        """One optimiser step over `group`'s micro-batches (gradients summed); its loss."""
        self.optimizer.zero_grad()
        total = 0.0
        for batch in group:
            loss = _batch_loss(self.loss, batch, self.data, self.labelled) / len(group)
            loss.backward()
            total += float(loss.detach())
            self.samples += len(batch)
        self.optimizer.step()
        return total

    def validate(self) -> None:
        """Validation Recall@k of the epoch just trained: history, best weights, patience."""
        options, position = self.options, self.position
        self.encoder.module.eval()
        recall = validation_recall(self.encoder, self.data, options.recall_k)
        position.history.append({"epoch": position.epoch, "step": position.step, "recall": recall})
        if self.observe:
            metrics = {f"val_recall_at_{options.recall_k}": recall, "epoch": position.epoch}
            self.observe("eval", position.step, metrics)
        if math.isnan(recall) or recall > position.best_recall:
            position.best_recall, position.best_epoch, position.bad_evals = (
                recall,
                position.epoch,
                0,
            )
            self.best = {k: v.detach().clone() for k, v in self.encoder.module.state_dict().items()}
        else:
            position.bad_evals += 1
        position.epoch, position.batch, position.mined = position.epoch + 1, 0, {}


def _resume(
    encoder: TrainableEncoder,
    optimizer: Any,
    loss: InfoNCELoss,
    state_dir: Path,
    signature: str,
    log: Callable[[str], None],
) -> tuple[LoopPosition, dict[str, Any] | None]:
    """Where the run starts, and its best weights so far.

    From the state in `state_dir` if this very run (same signature) saved it: its weights,
    optimiser, temperature and RNG are loaded back. Any other state is left to be replaced.
    """
    import torch

    saved = load_state(state_dir)
    if saved is not None and saved.position.signature != signature:
        log(f"training state in {state_dir} is from other options or data: starting afresh")
        saved = None
    if saved is None:
        return LoopPosition(signature=signature), None
    encoder.module.load_state_dict(saved.weights)
    optimizer.load_state_dict(saved.optimizer)
    loss.load_state_dict({k: saved.extra[k] for k in loss.state_dict()})
    torch.set_rng_state(saved.extra["rng"])
    position = saved.position
    log(f"resuming from step {position.step} (epoch {position.epoch}, batch {position.batch})")
    return position, saved.best


def train_retriever(
    encoder: TrainableEncoder,
    data: TrainingData,
    options: TrainOptions,
    state_dir: Path,
    observe: Observer | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `encoder` in place on `data`; it ends holding its best weights by validation.

    Args:
        encoder: a fresh encoder (its config and seed are part of the run's signature).
        data: train and validation queries, pools.
        options: the training options.
        state_dir: where the resumable state lives; a state with the same signature is
            resumed, any other is replaced. Removed once training finishes.
        observe: called after every optimiser step ("step": loss, temperature,
            samples_per_s) and every validation ("eval": recall, epoch).
        log: one line per notable event (resume, early stop).

    Raises:
        ValueError: no train query.
    """
    import torch

    from rar_pipeline.core.retrieval.losses import InfoNCELoss

    if not data.train:
        raise ValueError("no train query: the corpus has no train split with resolvable positives")
    torch.manual_seed(options.seed)
    signature = run_signature(encoder, data, options)
    loss = InfoNCELoss(encoder, options.temperature, learnable=options.learn_temperature)
    params = [p for p in encoder.module.parameters() if p.requires_grad]
    params += [p for p in loss.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=options.lr)
    position, best = _resume(encoder, optimizer, loss, Path(state_dir), signature, log)
    resumed_from = position.step
    loop = EpochLoop(
        encoder, data, options, loss, optimizer, position, Path(state_dir), observe, best
    )
    while not position.stopped and position.epoch < options.epochs:
        loop.run_epoch()
        loop.validate()
        if options.max_steps and position.step >= options.max_steps:
            position.stopped = f"reached {options.max_steps} steps"
        elif position.bad_evals >= options.patience:
            position.stopped = (
                f"validation Recall@{options.recall_k} did not improve "
                f"for {options.patience} epochs"
            )
            log(position.stopped)
        loop.checkpoint()
    position.stopped = position.stopped or f"reached {options.epochs} epochs"
    if loop.best is not None:
        encoder.module.load_state_dict(loop.best)
    encoder.module.eval()
    shutil.rmtree(state_dir, ignore_errors=True)
    return TrainResult.ended_at(encoder, position, resumed_from, options.recall_k)
