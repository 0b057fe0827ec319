"""``long_documents="focus"``: one window of a long document's first sentence and its most query-like sentences."""

from __future__ import annotations

import pytest

from crossrank.errors import InputError
from crossrank.rerank import CrossEncoderReranker, load_reranker
from crossrank.rerank.focus import SentenceFocus

QUERY = "What constrains the density of dark matter?"
OPENING = "Dark matter in galaxies."
FILLER = [f"Sentence {i} describes the weather over the old mill and the lake nearby." for i in range(12)]
ANSWER = "Observations of the cosmic microwave background constrain the density of dark matter."
LONG = " ".join([OPENING, *FILLER[:8], ANSWER, *FILLER[8:]])


@pytest.fixture(scope="module")
def engine():
    return load_reranker("default", max_length=64, activation="raw", cache_size=0)


@pytest.fixture(scope="module")
def tokenizer(engine):
    return engine.tokenizer  # the bundled default's (real) WordPiece tokenizer


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_window_keeps_the_opening_and_the_answer_in_document_order(tokenizer):
    focus = SentenceFocus(tokenizer)
    q, d = _ids(tokenizer, QUERY), _ids(tokenizer, LONG)
    opening, answer = _ids(tokenizer, OPENING), _ids(tokenizer, ANSWER)
    budget = len(opening) + len(answer) + 5  # room for no filler sentence
    w = focus.window(q, d, budget)
    assert w == opening + answer
    roomy = focus.window(q, d, len(opening) + len(answer) + 2 * len(_ids(tokenizer, FILLER[0])))
    assert roomy[: len(opening)] == opening and len(roomy) <= len(d)
    assert tokenizer.decode(roomy).count("weather") == 2  # the first two fillers after the answer, in order
    assert tokenizer.decode(roomy).index("sentence 0") < tokenizer.decode(roomy).index("observations")


def test_window_within_budget_and_whole_when_it_fits(tokenizer):
    focus = SentenceFocus(tokenizer)
    q, d = _ids(tokenizer, QUERY), _ids(tokenizer, LONG)
    assert focus.window(q, d, len(d)) == d
    for budget in (3, 10, 40, 90):
        w = focus.window(q, d, budget)
        assert 0 < len(w) <= budget
    assert focus.window(q, d, 3) == d[:3]  # the opening alone is longer: cut to the budget


def test_query_terms_skip_stopwords_and_short_pieces(tokenizer):
    focus = SentenceFocus(tokenizer)
    terms = set(tokenizer.convert_ids_to_tokens(sorted(focus.query_terms(_ids(tokenizer, "Is the density of dark "
                                                                              "matter constrained?")))))
    assert terms == {"density", "dark", "matter", "constrained"}  # not: is, the, of (stopwords), ? (short)


def test_sentences_split_at_end_marks(tokenizer):
    focus = SentenceFocus(tokenizer)
    d = _ids(tokenizer, "One. Two?! Three")
    assert [tokenizer.decode(s) for s in focus.sentences(d)] == ["one.", "two?!", "three"]


def test_engine_focus_scores_one_window_that_holds_the_answer(engine):
    """The bundled default at 64 tokens: truncation cuts the answer off, focus keeps it, and scores it higher."""
    focused = engine.with_options(long_documents="focus")
    assert focused.info()["long_documents"] == "focus" and engine.info()["long_documents"] == "truncate"
    text = focused.tokenizer.decode(focused.pair_inputs(QUERY, LONG)[0]["input_ids"])
    assert "microwave background" in text
    assert "microwave background" not in engine.tokenizer.decode(engine.pair_inputs(QUERY, LONG)[0]["input_ids"])
    got, cut = focused.score(QUERY, [LONG]), engine.score(QUERY, [LONG])
    assert got.truncated == [True] and focused.count_inputs(QUERY, [LONG]).windows == 1
    assert got.scores[0] > cut.scores[0] + 1.0
    short = "Dark matter density is constrained by the microwave background."
    assert focused.score(QUERY, [short]).scores == pytest.approx(engine.score(QUERY, [short]).scores, abs=1e-5)


def test_unknown_mode_names_the_three(tiny_model_dir):
    with pytest.raises(InputError, match="truncate, chunk, focus"):
        CrossEncoderReranker(tiny_model_dir, long_documents="sentences")
