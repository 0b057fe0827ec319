"""Relevance scores in [0, 1] that mean something: Platt scaling of a cross-encoder's logits.

A cross-encoder trained with a listwise loss ranks well but its logits have no fixed scale (every score of a query
can read 0.999). :class:`Calibration` maps a logit ``x`` to ``sigmoid(scale * x + shift)``, fitted on held-out
labelled pairs (:func:`fit_platt`) so that among pairs scored about p, about p are relevant
(:func:`expected_calibration_error` measures how far that holds). The identity calibration is the plain sigmoid
that sentence-transformers' ``CrossEncoder`` applies. This module is the one place where logits become
probabilities and back (the engine, the server's dialects and the fitting all use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from crossrank.errors import InputError

_EPS = 1e-7


def sigmoid(x: float) -> float:
    """Numerically safe logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def logit(p: float) -> float:
    """Inverse of :func:`sigmoid`, clipped away from 0 and 1."""
    p = min(max(float(p), _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class Calibration:
    """``relevance = sigmoid(scale * logit + shift)``; ``scale`` must be positive (the order never changes)."""

    scale: float = 1.0
    shift: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and math.isfinite(self.shift)) or self.scale <= 0:
            raise InputError(f"calibration needs a finite positive scale and a finite shift, got {self}")

    def prob(self, x: float) -> float:
        """The calibrated relevance of a raw logit."""
        return sigmoid(self.scale * float(x) + self.shift)

    def raw(self, p: float) -> float:
        """The raw logit whose calibrated relevance is ``p``."""
        return (logit(p) - self.shift) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"method": "platt", "scale": self.scale, "shift": self.shift}

    @classmethod
    def parse(cls, spec: "Calibration | Mapping[str, Any] | None") -> "Calibration":
        """A Calibration, a ``{"scale", "shift"}`` mapping (a bundle's ``settings.calibration``) or None (identity)."""
        if spec is None:
            return IDENTITY
        if isinstance(spec, Calibration):
            return spec
        if isinstance(spec, Mapping):
            try:
                return cls(scale=float(spec.get("scale", 1.0)), shift=float(spec.get("shift", 0.0)))
            except (TypeError, ValueError) as e:
                raise InputError(f"bad calibration {dict(spec)!r}: {e}") from e
        raise InputError(f"calibration must be a mapping with scale and shift, not {type(spec).__name__}")


IDENTITY = Calibration()


def fit_platt(logits: Sequence[float], labels: Sequence[int | bool]) -> Calibration:
    """The (scale, shift) that minimise the log loss of ``sigmoid(scale * logit + shift)`` on labelled pairs."""
    from scipy.optimize import minimize

    x = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=float)
    if x.size == 0 or x.size != y.size:
        raise InputError("fit_platt needs as many labels as logits, at least one")
    if y.min() == y.max():
        raise InputError("fit_platt needs both relevant and non-relevant pairs")

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * x + theta[1]
        # log(1 + e^z) - y z, and its gradient, without overflow
        nll = np.logaddexp(0.0, z) - y * z
        g = 1.0 / (1.0 + np.exp(-z)) - y
        return float(nll.mean()), np.array([(g * x).mean(), g.mean()])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                   bounds=[(1e-4, None), (None, None)])
    return Calibration(scale=float(res.x[0]), shift=float(res.x[1]))


def reliability(probs: Sequence[float], labels: Sequence[int | bool], bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of predicted relevance: mean prediction, observed share of relevant pairs, count."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append({"low": b / bins, "high": (b + 1) / bins, "mean_score": float(p[m].mean()),
                         "relevant_share": float(y[m].mean()), "pairs": int(m.sum())})
    return rows


def expected_calibration_error(probs: Sequence[float], labels: Sequence[int | bool], bins: int = 10) -> float:
    """Pair-weighted mean of |mean prediction - observed share| over equal-width bins (ECE)."""
    rows = reliability(probs, labels, bins)
    n = sum(r["pairs"] for r in rows)
    return float(sum(r["pairs"] * abs(r["mean_score"] - r["relevant_share"]) for r in rows) / max(n, 1))
