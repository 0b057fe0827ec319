"""Errors with messages meant for people. The CLI prints them without a traceback; the server maps them to 4xx."""

from __future__ import annotations

from typing import Any


class CrossrankError(Exception):
    """Base class: anything raised on purpose, with a message a user can act on."""


class InputError(CrossrankError, ValueError):
    """Bad input: empty query, empty corpus, unreadable or non-UTF-8 file, invalid option."""


class ModelLoadError(CrossrankError):
    """A model path or id that cannot be loaded as the kind of model asked for."""


class IndexLoadError(CrossrankError):
    """A missing, incomplete or incompatible index directory."""


class RerankerUnavailable(CrossrankError):
    """A reranker that failed, timed out or is unreachable (the pipeline falls back on it)."""


class RerankTimeout(RerankerUnavailable):
    """A reranker's time budget (``timeout_s``) ran out before every pair was scored; the work left was dropped."""


def check_query(query: Any) -> str:
    """``query`` if it is a non-blank string, else the one InputError every stage raises for a bad query."""
    if not isinstance(query, str):
        raise InputError(f"query must be a string, not {type(query).__name__}")
    if not query.strip():
        raise InputError("query is empty")
    return query


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what a one-line error shows."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
