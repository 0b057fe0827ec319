"""Ranking losses over groups. ``scores`` is ``[G, 1 + n]`` with the positive in column 0; ``mask`` marks real
entries (groups may have fewer than n negatives). The distillation losses also take ``teacher``, the teacher's
raw logits for the same pairs in the same layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossrank.train.config import DISTILL_LOSSES


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


# Weight of the pointwise term in "distill": the KL term alone reproduces each query's order but not the teacher's
# score scale, and the teacher's calibration, threshold and fusion weight (and a cascade that mixes the two
# models' scores) rely on that scale.
DISTILL_MSE_WEIGHT = 0.2


def distill_kl_loss(scores: torch.Tensor, mask: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between the two softmax distributions over each group's real entries."""
    s = F.log_softmax(scores.float().masked_fill(~mask, float("-inf")), dim=1)
    t = F.log_softmax(teacher.float().masked_fill(~mask, float("-inf")), dim=1)
    kl = torch.where(mask, t.exp() * (t - s), torch.zeros_like(s))  # masked entries: 0 * (-inf) would be nan
    return kl.sum(dim=1).mean()


def mse_loss(scores: torch.Tensor, mask: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the logits over real entries."""
    d = torch.where(mask, scores.float() - teacher.float(), torch.zeros_like(scores, dtype=torch.float32))
    return (d * d).sum() / mask.sum().clamp(min=1)


def margin_mse_loss(scores: torch.Tensor, mask: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Margin-MSE (Hofstatter et al. 2020): the student's (s_0 - s_j) should equal the teacher's (t_0 - t_j)."""
    s, t = scores.float(), teacher.float()
    d = (s[:, :1] - s[:, 1:]) - (t[:, :1] - t[:, 1:])
    m = mask[:, 1:]
    d = torch.where(m, d, torch.zeros_like(d))
    return (d * d).sum() / m.sum().clamp(min=1)



def compute_loss(name: str, scores: torch.Tensor, mask: torch.Tensor, margin: float = 0.0,
                 teacher: torch.Tensor | None = None) -> torch.Tensor:
    if name in DISTILL_LOSSES:
        if teacher is None:
            raise ValueError(f"loss {name!r} needs the teacher's scores")
        if name == "margin-mse":
            return margin_mse_loss(scores, mask, teacher)
        return distill_kl_loss(scores, mask, teacher) + DISTILL_MSE_WEIGHT * mse_loss(scores, mask, teacher)
    if name == "listwise":
        return listwise_loss(scores, mask)
    if name == "listwise+bce":
        return listwise_loss(scores, mask) + LISTWISE_BCE_WEIGHT * bce_loss(scores, mask)
    if name == "pairwise":
        return pairwise_loss(scores, mask, margin)
    if name == "bce":
        return bce_loss(scores, mask)
    raise ValueError(f"unknown loss {name!r}")
