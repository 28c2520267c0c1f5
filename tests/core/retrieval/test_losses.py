"""InfoNCE, checked against a reference computed by hand in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rar_pipeline.core.retrieval.losses import compute_loss_from_embeddings, false_negative_mask


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
