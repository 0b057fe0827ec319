"""Counterfactual negatives: a positive passage with the entity it shares with the query swapped for another.

Mined negatives teach a cross-encoder which passages are off topic; they rarely teach it that a passage stating
the asked-for relation about *another* entity is not an answer ("Carson City is the capital of Nevada" for "the
capital of the United States"). Swapping the query's entity in a judged positive for an entity of another
positive of the same source makes exactly that pair, with the rest of the passage unchanged (counterfactual or
entity-substitution augmentation). Everything here is deterministic given the ``rng`` passed in, so a schedule
that uses it stays a pure function of the config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

# A name: capitalised tokens on one line, optionally joined by a lower-case connector ("District of Columbia").
_ENTITY = re.compile(r"[A-Z][\w'’.-]*\w(?:[ \t]+(?:(?:of|the|de|del|da|von|van|and|y)[ \t]+)?[A-Z][\w'’.-]*\w)*")
# Capitalised only because they start a sentence or a question: never an entity on their own.
_STOP = frozenset("""a an and are as at be but by can did do does for from had has have he her his how i if in is it
its many much name not of on or she so that the their there these they this those to was we were what when where which
who whom whose why will with would you""".split())
MIN_ENTITY_CHARS = 3


def entities(text: str) -> list[str]:
    """The names in ``text``, in order of appearance, a leading stop word cut ("The Beatles" -> "Beatles")."""
    out = []
    for m in _ENTITY.finditer(text):
        words = m.group(0).split()
        while words and words[0].lower() in _STOP:
            words = words[1:]
        name = " ".join(words)
        if len(name) >= MIN_ENTITY_CHARS and name.lower() not in _STOP:
            out.append(name)
    return out


def _mentions(text_lower: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", text_lower) is not None


def shared_entity(query: str, passage: str) -> str | None:
    """The longest name of ``passage`` that the query also mentions (case-insensitively: Natural Questions'
    queries are lower case), or None."""
    q = query.lower()
    shared = {e for e in entities(passage) if _mentions(q, e)}
    return max(sorted(shared), key=len) if shared else None


def entity_pool(texts: Iterable[str]) -> dict[int, list[str]]:
    """Distinct names of ``texts`` by word count, sorted (a replacement keeps the length of what it replaces)."""
    by_words: dict[int, set[str]] = {}
    for t in texts:
        for e in entities(t):
            by_words.setdefault(len(e.split()), set()).add(e)
    return {n: sorted(names) for n, names in by_words.items()}


def swap_entity(query: str, passage: str, pool: dict[int, list[str]], rng: np.random.Generator,
                tries: int = 8) -> str | None:
    """``passage`` with every mention (in any case) of its entity shared with ``query`` replaced by another name of
    the same word count from ``pool`` that neither text mentions; None when there is no shared entity or no such
    name."""
    name = shared_entity(query, passage)
    candidates = pool.get(len(name.split()), []) if name else []
    if not candidates:
        return None
    q, p = query.lower(), passage.lower()
    for _ in range(tries):
        other = candidates[int(rng.integers(len(candidates)))]
        if not _mentions(q, other) and not _mentions(p, other) and other.lower() not in name.lower():
            mention = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE)
            return mention.sub(lambda _m, other=other: other, passage)
    return None
