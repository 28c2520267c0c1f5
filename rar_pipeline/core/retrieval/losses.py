"""Contrastive loss of the retriever: InfoNCE over in-batch and hard negatives.

Split as sentence-transformers splits its losses (`MultipleNegativesRankingLoss`): the loss
is a module built on the model it trains, and owns its temperature; its `forward` embeds a
batch with that model and hands the embeddings to `compute_loss_from_embeddings`, a pure
function of tensors that tests check against a hand-computed reference. Candidates in the
batch that are labelled positives of a query (other than the one it is trained towards) are
masked out, not used as negatives: small pools, such as the demo's 36 knowledge passages,
make such collisions common.

torch is imported here at the top (the loss is a `torch.nn.Module`): the trainer imports
this module when it trains, not when the pipeline's definitions load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rar_pipeline.core.retrieval.encoders.base import EncodeItem, TrainableEncoder

MIN_TEMPERATURE = 1e-3  # a learnt temperature never goes below this


def false_negative_mask(
    positives: Sequence[set[str] | frozenset[str]],
    candidate_ids: Sequence[str],
    targets: Sequence[int],
) -> Tensor:
    """(b, c) bool: candidate j is a labelled positive of query i but not its target.

    Args:
        positives: each query's labelled positive ids.
        candidate_ids: the id of every candidate in the batch (positives, then negatives).
        targets: for each query, the column of the candidate it is trained towards.
    """
    mask = torch.zeros((len(positives), len(candidate_ids)), dtype=torch.bool)
    for i, labelled in enumerate(positives):
        for j, did in enumerate(candidate_ids):
            mask[i, j] = did in labelled and j != targets[i]
    return mask


def compute_loss_from_embeddings(
    queries: Tensor, candidates: Tensor, targets: Tensor, mask: Tensor | None, temperature: Any
) -> Tensor:
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
    logits = queries @ candidates.T / temperature  # (b, c)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, targets)


class InfoNCELoss(nn.Module):
    """InfoNCE of a retriever's queries against the candidates of their batch.

    The loss owns its temperature as `log_scale` = log(1 / temperature), a parameter that
    trains when `learnable` (the trainer hands the loss's parameters that require grad to
    its optimiser, after the encoder's) and otherwise stays where it started. Its state
    dict (`log_scale`) is part of the trainer's resumable state.

    Args:
        encoder: the retriever being trained (not a submodule: its parameters stay its own).
        temperature: the temperature, or where a learnable one starts.
        learnable: train the temperature too.
    """

    def __init__(self, encoder: TrainableEncoder, temperature: float, learnable: bool = False):
        super().__init__()
        self.encoder = encoder
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1 / temperature)), requires_grad=learnable
        )

    @property
    def temperature(self) -> Tensor:
        """0-d: what the logits are divided by, exp(-log_scale), at least `MIN_TEMPERATURE`."""
        return torch.exp(-self.log_scale).clamp(min=MIN_TEMPERATURE)

    def learnt_temperature(self) -> float:
        """exp(-log_scale) as a number (before the floor): what the trainer reports."""
        return float(torch.exp(-self.log_scale.detach()))

    def forward(
        self,
        queries: Sequence[EncodeItem],
        candidates: Sequence[EncodeItem],
        targets: Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Mean InfoNCE of the batch, with gradients into the encoder (and the temperature).

        Args:
            queries: the batch's b queries.
            candidates: its c candidates: each query's positive, then the negatives.
            targets: (b,) long: the column of each query's positive.
            mask: (b, c) bool: false negatives, left out (`false_negative_mask`).
        """
        query_emb = self.encoder.forward(self.encoder.inputs(queries))  # (b, d)
        cand_emb = self.encoder.forward(self.encoder.inputs(candidates))  # (c, d)
        return compute_loss_from_embeddings(query_emb, cand_emb, targets, mask, self.temperature)
