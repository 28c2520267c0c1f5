"""InfoNCE, checked against a reference computed by hand in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.retrieval.losses import (
    MIN_TEMPERATURE,
    InfoNCELoss,
    compute_loss_from_embeddings,
    false_negative_mask,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _reference(q: np.ndarray, c: np.ndarray, targets, mask, t: float) -> float:
    losses = []
    for i, target in enumerate(targets):
        logits = c @ q[i] / t
        kept = [j for j in range(len(c)) if not (mask is not None and mask[i][j])]
        log_z = np.log(np.sum(np.exp(logits[kept])))
        losses.append(log_z - logits[target])
    return float(np.mean(losses))


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_the_loss_matches_a_hand_computed_reference(temperature: float):
    rng = np.random.default_rng(0)
    q, c = _unit(rng.normal(size=(3, 4))), _unit(rng.normal(size=(5, 4)))  # 3 positives + 2 hard
    targets = [0, 1, 2]
    mask = [[False, False, False, False, False], [True, False, False, False, False],
            [False, False, False, True, False]]  # fmt: skip
    got = compute_loss_from_embeddings(
        torch.tensor(q), torch.tensor(c), torch.tensor(targets), torch.tensor(mask), temperature
    )
    assert got.item() == pytest.approx(_reference(q, c, targets, mask, temperature), rel=1e-6)
    unmasked = compute_loss_from_embeddings(
        torch.tensor(q), torch.tensor(c), torch.tensor(targets), None, temperature
    )
    assert unmasked.item() == pytest.approx(_reference(q, c, targets, None, temperature), rel=1e-6)


def test_a_labelled_positive_in_the_batch_is_not_a_negative():
    # query 0 has two positives, both in the batch; it trains towards column 0
    mask = false_negative_mask([{"p1", "p2"}, {"p2"}], ["p1", "p2", "n1"], targets=[0, 1])
    assert mask.tolist() == [[False, True, False], [False, False, False]]


def test_a_perfect_retriever_has_a_loss_near_zero_and_gradients_flow():
    q = torch.eye(3, requires_grad=True)
    loss = compute_loss_from_embeddings(q, torch.eye(3), torch.arange(3), None, 0.05)
    assert loss.item() < 1e-6
    learnable = torch.tensor(1.0, requires_grad=True)
    noisy = compute_loss_from_embeddings(
        torch.nn.functional.normalize(torch.randn(4, 8), dim=1),
        torch.nn.functional.normalize(torch.randn(6, 8), dim=1),
        torch.arange(4),
        None,
        learnable,
    )
    noisy.backward()
    assert learnable.grad is not None  # a learnable temperature trains too


class TinyEncoder:
    """Three hand-made features per text through a linear layer: enough to train."""

    def __init__(self) -> None:
        self.module = torch.nn.Linear(3, 4, bias=False)
        torch.nn.init.normal_(self.module.weight, generator=torch.Generator().manual_seed(0))

    def inputs(self, items):
        return torch.tensor([[len(i.txt), i.txt.count("a"), 1.0] for i in items])

    def forward(self, inputs):
        return torch.nn.functional.normalize(self.module(inputs), dim=1)


QUERIES = [EncodeItem("a red circle"), EncodeItem("blue")]
CANDIDATES = [EncodeItem("circle"), EncodeItem("a blue one"), EncodeItem("a bag")]


def test_the_loss_embeds_with_its_encoder_and_scores_with_the_pure_function():
    encoder = TinyEncoder()
    loss = InfoNCELoss(encoder, temperature=0.1)
    targets, mask = torch.tensor([0, 1]), torch.tensor([[False] * 3, [True, False, False]])
    q = encoder.forward(encoder.inputs(QUERIES))
    c = encoder.forward(encoder.inputs(CANDIDATES))
    expected = compute_loss_from_embeddings(q, c, targets, mask, torch.tensor(0.1))
    assert loss(QUERIES, CANDIDATES, targets, mask).item() == pytest.approx(expected.item())
    loss(QUERIES, CANDIDATES, targets, mask).backward()
    assert encoder.module.weight.grad is not None  # gradients reach the encoder


def test_a_fixed_temperature_never_trains_and_a_learnable_one_does():
    fixed = InfoNCELoss(TinyEncoder(), temperature=0.05)
    assert [p for p in fixed.parameters() if p.requires_grad] == []
    assert fixed.temperature.item() == pytest.approx(0.05)
    assert set(fixed.state_dict()) == {"log_scale"}  # saved with the trainer's state

    learnable = InfoNCELoss(TinyEncoder(), temperature=0.05, learnable=True)
    trained = [p for p in learnable.parameters() if p.requires_grad]
    assert trained == [learnable.log_scale]
    optimiser = torch.optim.SGD(trained, lr=0.1)
    learnable(QUERIES, CANDIDATES, torch.tensor([0, 1])).backward()
    optimiser.step()
    assert learnable.learnt_temperature() != pytest.approx(0.05)


def test_the_temperature_has_a_floor():
    loss = InfoNCELoss(TinyEncoder(), temperature=1e-5, learnable=True)
    assert loss.temperature.item() == pytest.approx(MIN_TEMPERATURE)
    assert loss.learnt_temperature() == pytest.approx(1e-5)  # reported as learnt
