"""The rerank wire dialects by name and HTTP path: what the server routes (``serve/``) and the client calls
(``rerank/remote.py``), so both read one table. Imports nothing of crossrank.

Only names and paths are here. The request and response shapes stay with each side: the server validates every
field a provider's SDK may send (``serve/dialects.py``) and writes the provider's full answer (``serve/routes.py``),
while the client sends the few fields it needs and reads only indices and scores. Those are two different pieces
of code for one external contract (TEI's, Cohere's, Jina's), which the tests hold both sides to: the client
against the real server per dialect (``tests/test_remote.py``), the server against the providers' own SDKs
(``tests/test_wire_clients.py``).
"""

from __future__ import annotations

TEI, COHERE, JINA = "tei", "cohere", "jina"
# Voyage, infinity and Cohere v1 are served on these paths too (told apart by the body, server side).
RERANK_PATHS: dict[str, str] = {TEI: "/rerank", COHERE: "/v2/rerank", JINA: "/v1/rerank"}


def dialect_at(path: str) -> str | None:
    """The dialect of a rerank endpoint whose path ends with one of :data:`RERANK_PATHS` (a service may sit under
    a prefix: ``/api/v2/rerank``), longest first, since ``/v2/rerank`` ends with ``/rerank`` too; None for none."""
    path = path.rstrip("/")
    for name, suffix in sorted(RERANK_PATHS.items(), key=lambda item: -len(item[1])):
        if path.endswith(suffix):
            return name
    return None
