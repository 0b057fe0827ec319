"""Errors with messages meant for people. The CLI prints them without a traceback; the server maps them to 4xx."""


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
