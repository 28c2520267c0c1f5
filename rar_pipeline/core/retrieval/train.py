"""Contrastive training of a retriever: InfoNCE over in-batch and hard negatives.

One epoch visits every train query once, with one of its positives drawn (seeded) for that
epoch, so a query with many positives does not dominate. A batch holds `batch_size`
queries, their drawn positives and up to `hard_negatives` negatives each (the corpus' own,
then mined ones); in-batch candidates that are labelled positives of a query other than its
target are masked out of its softmax (`losses.false_negative_mask`).

Seeded and deterministic on CPU. The loop saves its whole state (encoder, best encoder,
optimiser, RNG, position) every `checkpoint_every` optimiser steps; a run started again
with the same options and data resumes from there and ends with the same weights as an
uninterrupted one. Validation Recall@k (UniIR's: any positive in the top k, ranked against
the query's own pool) runs after every epoch; training stops after `patience` epochs
without improvement and keeps the best encoder.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rar_pipeline.core.files import values_hash
from rar_pipeline.core.retrieval.checkpoint import LoopPosition, load_state, save_state
from rar_pipeline.core.retrieval.data import TrainingData, TrainQuery
from rar_pipeline.core.retrieval.encoders.base import EncodeItem, TrainableEncoder
from rar_pipeline.core.retrieval.losses import compute_loss_from_embeddings, false_negative_mask
from rar_pipeline.core.retrieval.mining import mine_negatives, mining_depth
from rar_pipeline.core.retrieval.options import TrainOptions
from rar_pipeline.core.retrieval.rank import hit_rate, rank_in_pools

TRAINER_VERSION = "trainer-1"  # bump when the loop's rules change: part of asset versions


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


def validation_recall(
    encoder: TrainableEncoder, data: TrainingData, k: int, batch_size: int = 256
) -> float:
    """Recall@k of the validation queries, each ranked against its own pool."""
    if not data.val:
        return float("nan")
    ranked = rank_in_pools(
        encoder, [q.item for q in data.val], [q.pool for q in data.val],
        data.pools, data.candidates, k, batch_size,
    )  # fmt: skip
    return hit_rate(ranked, [q.positives for q in data.val], k)


def _mine(encoder: TrainableEncoder, data: TrainingData, k: int) -> dict[str, list[str]]:
    positives = [frozenset(q.positives) for q in data.train]
    depth = mining_depth(k, positives, data.test_only)
    ranked = rank_in_pools(
        encoder, [q.item for q in data.train], [q.pool for q in data.train],
        data.pools, data.candidates, depth,
    )  # fmt: skip
    found = mine_negatives(ranked, positives, k, data.test_only)
    return {q.qid: m for q, m in zip(data.train, found, strict=True)}


def _epoch_plan(
    data: TrainingData, options: TrainOptions, epoch: int, mined: dict[str, list[str]]
) -> list[list[tuple[TrainQuery, str, list[str]]]]:
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
    by_pool: dict[str, list[tuple[TrainQuery, str, list[str]]]] = {}
    for entry in planned:
        by_pool.setdefault(entry[0].pool, []).append(entry)
    batches = [
        group[i : i + options.batch_size]
        for _, group in sorted(by_pool.items())
        for i in range(0, len(group), options.batch_size)
    ]
    return [batches[int(i)] for i in rng.permutation(len(batches))]


def _batch_loss(
    encoder: TrainableEncoder,
    batch: list[tuple[TrainQuery, str, list[str]]],
    data: TrainingData,
    labelled: dict[str, frozenset[str]],
    temperature: Any,
) -> Any:
    import torch

    queries = [q.item for q, _, _ in batch]
    cand_ids = [positive for _, positive, _ in batch]
    cand_ids += [d for _, _, negatives in batch for d in negatives]
    cand_items: list[EncodeItem] = [data.candidates[d] for d in cand_ids]
    q_emb = encoder.forward(encoder.inputs(queries))
    c_emb = encoder.forward(encoder.inputs(cand_items))
    targets = list(range(len(batch)))
    mask = false_negative_mask([labelled[q.qid] for q, _, _ in batch], cand_ids, targets)
    return compute_loss_from_embeddings(q_emb, c_emb, torch.tensor(targets), mask, temperature)


def run_signature(encoder: TrainableEncoder, data: TrainingData, options: TrainOptions) -> str:
    """What a resumed run must share with the one it resumes."""
    return values_hash(
        [
            TRAINER_VERSION,
            json.dumps(asdict(options), sort_keys=True),
            json.dumps(encoder.config(), sort_keys=True),
            data.fingerprint(),
        ]
    )


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

    if not data.train:
        raise ValueError("no train query: the corpus has no train split with resolvable positives")
    torch.manual_seed(options.seed)
    signature = run_signature(encoder, data, options)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / options.temperature)))
    params = [p for p in encoder.module.parameters() if p.requires_grad]
    if options.learn_temperature:
        params.append(log_scale)
    optimizer = torch.optim.Adam(params, lr=options.lr)
    position = LoopPosition(signature=signature)
    best: dict[str, Any] | None = None
    saved = load_state(state_dir)
    if saved is not None and saved.position.signature != signature:
        log(f"training state in {state_dir} is from other options or data: starting afresh")
        saved = None
    if saved is not None:
        encoder.module.load_state_dict(saved.weights)
        best, position = saved.best, saved.position
        optimizer.load_state_dict(saved.optimizer)
        with torch.no_grad():
            log_scale.copy_(saved.extra["log_scale"])
        torch.set_rng_state(saved.extra["rng"])
        log(f"resuming from step {position.step} (epoch {position.epoch}, batch {position.batch})")
    resumed_from = position.step
    labelled = data.labelled()
    samples, started = 0, time.perf_counter()

    def checkpoint() -> None:
        weights = encoder.module.state_dict()
        save_state(state_dir, weights, best, optimizer, {"log_scale": log_scale}, position)

    while not position.stopped and position.epoch < options.epochs:
        if position.batch == 0 and options.mined_negatives:
            encoder.module.eval()
            position.mined = _mine(encoder, data, options.mined_negatives)
        batches = _epoch_plan(data, options, position.epoch, position.mined)
        encoder.module.train()
        while position.batch < len(batches):
            group = batches[position.batch : position.batch + options.grad_accum]
            optimizer.zero_grad()
            total = 0.0
            for batch in group:
                temperature = torch.exp(-log_scale).clamp(min=1e-3)
                loss = _batch_loss(encoder, batch, data, labelled, temperature) / len(group)
                loss.backward()
                total += float(loss.detach())
                samples += len(batch)
            optimizer.step()
            position.batch += len(group)
            position.step += 1
            if observe:
                rate = samples / max(time.perf_counter() - started, 1e-9)
                temp = float(torch.exp(-log_scale.detach()))
                observe(
                    "step",
                    position.step,
                    {"loss": total, "temperature": temp, "samples_per_s": rate},
                )
            if position.step % options.checkpoint_every == 0:
                checkpoint()
            if options.max_steps and position.step >= options.max_steps:
                position.batch = len(batches)  # the epoch ends here; validation follows
        encoder.module.eval()
        recall = validation_recall(encoder, data, options.recall_k)
        position.history.append({"epoch": position.epoch, "step": position.step, "recall": recall})
        if observe:
            observe(
                "eval",
                position.step,
                {f"val_recall_at_{options.recall_k}": recall, "epoch": position.epoch},
            )
        if math.isnan(recall) or recall > position.best_recall:
            position.best_recall, position.best_epoch, position.bad_evals = (
                recall,
                position.epoch,
                0,
            )
            best = {k: v.detach().clone() for k, v in encoder.module.state_dict().items()}
        else:
            position.bad_evals += 1
        position.epoch, position.batch, position.mined = position.epoch + 1, 0, {}
        if options.max_steps and position.step >= options.max_steps:
            position.stopped = f"reached {options.max_steps} steps"
        elif position.bad_evals >= options.patience:
            position.stopped = (
                f"validation Recall@{options.recall_k} did not improve "
                f"for {options.patience} epochs"
            )
            log(position.stopped)
        checkpoint()
    position.stopped = position.stopped or f"reached {options.epochs} epochs"
    if best is not None:
        encoder.module.load_state_dict(best)
    encoder.module.eval()
    result = TrainResult(
        encoder=encoder,
        best_recall=position.best_recall,
        best_epoch=position.best_epoch,
        epochs=position.epoch,
        steps=position.step,
        stopped=position.stopped,
        resumed_from_step=resumed_from,
        history=position.history,
        recall_k=options.recall_k,
        signature=signature,
    )
    shutil.rmtree(state_dir, ignore_errors=True)
    return result
