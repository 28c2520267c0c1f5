"""Contrastive loss of the retriever: InfoNCE over in-batch and hard negatives.

Split as sentence-transformers splits its losses: a model embeds (`forward` in training),
and `compute_loss_from_embeddings` scores, a pure function of tensors that tests check
against a hand-computed reference. Candidates in the batch that are labelled positives of a
query (other than the one it is trained towards) are masked out, not used as negatives:
small pools, such as the demo's 36 knowledge passages, make such collisions common.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def false_negative_mask(
    positives: Sequence[set[str]], candidate_ids: Sequence[str], targets: Sequence[int]
) -> Any:
    """(b, c) bool: candidate j is a labelled positive of query i but not its target.

    Args:
        positives: each query's labelled positive ids.
        candidate_ids: the id of every candidate in the batch (positives, then negatives).
        targets: for each query, the column of the candidate it is trained towards.
    """
    import torch

    mask = torch.zeros((len(positives), len(candidate_ids)), dtype=torch.bool)
    for i, labelled in enumerate(positives):
        for j, did in enumerate(candidate_ids):
            mask[i, j] = did in labelled and j != targets[i]
    return mask


def compute_loss_from_embeddings(
    queries: Any, candidates: Any, targets: Any, mask: Any | None, temperature: Any
) -> Any:
    """Mean InfoNCE of each query against every candidate of the batch.

    Args:
        queries: (b, d) unit-length query embeddings.
        candidates: (c, d) unit-length candidate embeddings, c >= b.
        targets: (b,) long: the column of each query's positive.
        mask: (b, c) bool: columns to leave out of each query's softmax (false negatives);
            None leaves none out.
        temperature: a float or a 0-d tensor (learnable).

    Returns:
        A 0-d tensor.
    """
    import torch

    logits = queries @ candidates.T / temperature  # (b, c)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, targets)
