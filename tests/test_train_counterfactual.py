"""Counterfactual (entity-swapped) negatives: the text rules, and how they enter the training schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_beir
from crossrank.errors import InputError
from crossrank.train import SourceSpec, TrainConfig
from crossrank.train.counterfactual import entities, entity_pool, shared_entity, swap_entity
from crossrank.train.data import build_schedule, build_sources
from crossrank.train.trainer import _micro_batch

WASHINGTON = ("Washington, D.C. (also known as the District of Columbia) is the capital of the United States. "
              "The United States Congress meets there.")
POOL = entity_pool(["Carson City is the capital of Nevada.", "Saipan is the capital of the Northern Mariana Islands.",
                    "The Rocky Mountains run through Canada and the United Kingdom."])


def test_entities_are_capitalised_runs_without_sentence_initial_stop_words():
    assert entities("The Beatles met Elvis Presley in Los Angeles. What a day.") == ["Beatles", "Elvis Presley",
                                                                                     "Los Angeles"]
    assert "District of Columbia" in entities(WASHINGTON)


def test_the_shared_entity_is_matched_in_any_case_and_the_longest_wins():
    assert shared_entity("What is the capital of the United States?", WASHINGTON) == "United States"
    assert shared_entity("what is the capital of the united states", WASHINGTON) == "United States"  # NQ style
    assert shared_entity("how do volcanoes form", WASHINGTON) is None


def test_swap_replaces_every_mention_with_a_name_of_the_same_length():
    rng = np.random.default_rng(0)
    swapped = swap_entity("What is the capital of the United States?", WASHINGTON, POOL, rng)
    assert swapped is not None and "United States" not in swapped
    other = swapped.split("is the capital of the ")[1].split(".")[0]
    assert other in POOL[2] and swapped.count(other) == 2  # both mentions, a two-word name
    assert swapped.replace(other, "United States") == WASHINGTON  # nothing else changed
    assert swap_entity("how do volcanoes form", WASHINGTON, POOL, rng) is None  # no shared entity
    assert swap_entity("capital of the United States", WASHINGTON, {1: ["Nevada"]}, rng) is None  # no 2-word name


def test_swap_is_deterministic_for_a_seed():
    runs = [swap_entity("capital of the United States", WASHINGTON, POOL, np.random.default_rng(5)) for _ in range(2)]
    assert runs[0] == runs[1]


CITIES = [("Paris", "France"), ("Berlin", "Germany"), ("Madrid", "Spain"), ("Rome", "Italy"), ("Lisbon", "Portugal"),
          ("Vienna", "Austria"), ("Athens", "Greece"), ("Dublin", "Ireland")]


@pytest.fixture()
def capitals(tmp_path) -> Path:
    docs, queries, qrels = [], [], []
    for i, (city, country) in enumerate(CITIES):
        docs.append({"_id": f"d{i}", "title": city, "text": f"{city} is the capital and largest city of {country}."})
        docs.append({"_id": f"n{i}", "title": "Trade", "text": f"{country} exports wine and cheese to its neighbours."})
        queries.append({"_id": f"q{i}", "text": f"what is the capital of {country.lower()}"})
        qrels.append(f"q{i}\td{i}\t1")
    return write_beir(tmp_path / "capitals", docs, queries, qrels)


def _config(root: Path, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(sources=[SourceSpec(str(root), "beir", weight=1.0)], output_dir=str(tmp_path / "run"),
                mine_retriever="bm25", mine_k=10, negatives=3, groups_per_batch=2, max_steps=6, dev_fraction=0.25,
                dev_k=10, select=False, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def test_schedule_without_swaps_is_unchanged_and_with_swaps_holds_one_per_group(capitals, tmp_path):
    plain_cfg, swap_cfg = _config(capitals, tmp_path), _config(capitals, tmp_path, swap_negatives=1)
    plain, swapped = build_sources(plain_cfg, tmp_path / "cache"), build_sources(swap_cfg, tmp_path / "cache")
    assert not any(g.counterfactuals for g in plain[0].groups)
    groups = swapped[0].groups
    assert all(len(g.counterfactuals) == 1 for g in groups)
    names = {n for pair in CITIES for n in pair}
    for g in groups:  # the country the query asks about is gone; another name of the source stands in its place
        country = g.query.rsplit(" ", 1)[1]
        assert country not in g.counterfactuals[0].lower()
        assert {n for n in names if n in g.counterfactuals[0]} - {n for n in names if n in g.positives[0]}
    # counterfactual texts present but not asked for: the schedule is the one a run without them always had
    assert build_schedule(swapped, plain_cfg) == build_schedule(plain, plain_cfg)
    schedule = build_schedule(swapped, swap_cfg)
    for step in schedule:
        for items in step:
            assert all(len(it.swaps) == 1 and len(it.negs) == 2 for it in items)
            queries, texts, mask, n = _micro_batch(swapped, items)
            assert n == 3 and mask.all()
            for gi, it in enumerate(items):  # group layout: positive, counterfactual, mined negatives
                g = groups[it.group]
                assert texts[gi * 4] == g.positives[it.pos] and texts[gi * 4 + 1] == g.counterfactuals[0]


def test_swap_negatives_must_not_be_negative(capitals, tmp_path):
    with pytest.raises(InputError, match="swap_negatives"):
        _config(capitals, tmp_path, swap_negatives=-1).validate()
