"""Calibrated relevance: Platt fitting, ECE, the engine's calibrated scores and the threshold / fusion choices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossrank.errors import InputError
from crossrank.rerank.calibration import (
    IDENTITY,
    Calibration,
    expected_calibration_error,
    fit_platt,
    logit,
    reliability,
    sigmoid,
)
from crossrank.train.heldout import choose_fusion, choose_threshold, threshold_report


def _synthetic(scale: float, shift: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true relevance probability is sigmoid(scale * x + shift)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 4.0, n)
    p = 1.0 / (1.0 + np.exp(-(scale * x + shift)))
    return x, (rng.random(n) < p).astype(int)


def test_fit_platt_recovers_the_generating_scale_and_shift():
    x, y = _synthetic(0.4, -1.5)
    cal = fit_platt(x, y)
    assert cal.scale == pytest.approx(0.4, abs=0.06)
    assert cal.shift == pytest.approx(-1.5, abs=0.2)
    fitted = [cal.prob(v) for v in x]
    plain = [sigmoid(v) for v in x]
    assert expected_calibration_error(fitted, y) < 0.03
    assert expected_calibration_error(plain, y) > 0.1  # saturated logits read as near-certain


def test_calibration_round_trips_and_keeps_order():
    cal = Calibration(scale=0.3, shift=-2.0)
    for x in (-12.0, -1.0, 0.0, 3.5, 15.0):
        assert cal.raw(cal.prob(x)) == pytest.approx(x, abs=1e-5)
    xs = [-3.0, -1.0, 2.0, 8.0]
    assert sorted(xs, key=cal.prob) == xs
    assert IDENTITY.prob(0.0) == 0.5 and logit(0.5) == 0.0
    assert Calibration.parse(cal.to_dict()) == cal and Calibration.parse(None) is IDENTITY


@pytest.mark.parametrize("bad", [{"scale": 0}, {"scale": -1}, {"scale": "x"}, {"shift": math.inf}, 3])
def test_bad_calibration_is_an_input_error(bad):
    with pytest.raises(InputError):
        Calibration.parse(bad)


def test_fit_platt_needs_both_labels():
    with pytest.raises(InputError):
        fit_platt([1.0, 2.0], [1, 1])
    with pytest.raises(InputError):
        fit_platt([], [])


def test_reliability_bins_count_every_pair():
    p = [0.05, 0.15, 0.95, 0.99, 1.0]
    rows = reliability(p, [0, 0, 1, 1, 1])
    assert sum(r["pairs"] for r in rows) == 5
    assert expected_calibration_error(p, [0, 0, 1, 1, 1]) == pytest.approx(np.mean([0.05, 0.15, 0.05, 0.01, 0.0]))


def test_threshold_separates_relevant_from_not_relevant():
    pos = [0.9, 0.8, 0.7, 0.65]
    neg = [0.1, 0.2, 0.3, 0.6]
    t = choose_threshold(pos, neg)
    assert 0.6 < t <= 0.65
    r = threshold_report(t, pos, neg)
    assert r["recall"] == 1.0 and r["precision"] == 1.0 and r["rejected_not_relevant"] == 1.0


def test_fusion_choice_weighs_every_source_the_same():
    # source a (many queries) prefers CE alone, source b prefers fusion by more: the macro mean picks fusion
    a = {"first_stage": {"q": 0.5}, "ce": {"q": 0.62}, "rrf": {"q": 0.6}}
    b = {"first_stage": {"q": 0.5}, "ce": {"q": 0.3}, "rrf": {"q": 0.55}}
    for t, v in ((a, 0.58), (b, 0.5)):
        t.update({f"{m}:{w}": {"q": v} for m in ("interpolate", "confidence")
                  for w in np.round(np.arange(0.0, 1.01, 0.1), 1)})
    best, macro = choose_fusion({"a": a, "b": b})
    assert best == "rrf"
    assert macro["rrf"] == pytest.approx(0.575)


@pytest.mark.slow
def test_engine_returns_calibrated_scores_and_raw_on_request(tiny_model_dir):
    from crossrank.rerank import load_reranker

    cal = Calibration(scale=0.5, shift=-1.0)
    raw = load_reranker(tiny_model_dir, activation="raw", cache_size=0, dtype="fp32")
    calibrated = load_reranker(tiny_model_dir, calibration=cal.to_dict(), cache_size=0, dtype="fp32")
    texts = ["plants make glucose", "volcanoes erupt", "a third text"]
    logits = raw.score("what do plants make", texts).scores
    probs = calibrated.score("what do plants make", texts).scores
    assert probs == pytest.approx([cal.prob(x) for x in logits], abs=1e-6)
    assert calibrated.info()["calibration"] == cal.to_dict()
