"""Ranking losses over groups. ``scores`` is ``[G, 1 + n]`` with the positive in column 0; ``mask`` marks real
entries (groups may have fewer than n negatives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def listwise_loss(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the positive against its group (InfoNCE / "localised contrastive" loss)."""
    logits = scores.float().masked_fill(~mask, float("-inf"))
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(logits, target)


def pairwise_loss(scores: torch.Tensor, mask: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """RankNet-style logistic loss over every (positive, negative) pair: log(1 + exp(-(s_pos - s_neg - margin)))."""
    s = scores.float()
    diff = s[:, :1] - s[:, 1:] - margin
    m = mask[:, 1:]
    loss = F.softplus(-diff)
    return (loss * m).sum() / m.sum().clamp(min=1)


def bce_loss(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pointwise binary cross-entropy: positive -> 1, negatives -> 0 (all real entries weigh the same)."""
    s = scores.float().masked_fill(~mask, 0.0)  # padded entries hold -inf, whose BCE is nan even when masked out
    labels = torch.zeros_like(s)
    labels[:, 0] = 1.0
    loss = F.binary_cross_entropy_with_logits(s, labels, reduction="none")
    m = mask.float()
    return (loss * m).sum() / m.sum().clamp(min=1)


# Weight of the pointwise term in "listwise+bce". The listwise loss alone is blind to a shift of all of a query's
# scores, so a model trained with it alone can put every pair of a query near 0.999 (no threshold means anything);
# the BCE term ties scores to "relevant or not" across queries.
LISTWISE_BCE_WEIGHT = 0.5


def compute_loss(name: str, scores: torch.Tensor, mask: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    if name == "listwise":
        return listwise_loss(scores, mask)
    if name == "listwise+bce":
        return listwise_loss(scores, mask) + LISTWISE_BCE_WEIGHT * bce_loss(scores, mask)
    if name == "pairwise":
        return pairwise_loss(scores, mask, margin)
    if name == "bce":
        return bce_loss(scores, mask)
    raise ValueError(f"unknown loss {name!r}")
