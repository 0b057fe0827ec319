"""Schemathesis hooks for the crossrank runs (``SCHEMATHESIS_HOOKS=tests/schemathesis_hooks.py``): two built-in checks
narrowed to what the OpenAPI document cannot say, and the command line both runs use (``tests/test_openapi.py``,
``benchmarks/run_schemathesis.py``).

The run excludes the built-in ``not_a_server_error`` and ``positive_data_acceptance`` and runs the two checks below
instead. Each calls the built-in one and lets through only the failures listed here, each for a reason JSON Schema
has no words for; every other failure of theirs is reported as theirs.

``not_a_server_error_but_client_deadlines`` lets through a 504 "deadline exceeded" only when the client itself set
a deadline under :data:`SHORT_DEADLINE_MS` (``deadline_ms`` in the body, else the ``X-Crossrank-Deadline-Ms``
header): the generator sends budgets such as 5e-324 ms, which no server can meet, and answering them 504 is the
documented contract (``ServeConfig``, the 504 response of each rerank route). Any 5xx on a default or a generous
deadline still fails.

``positive_data_acceptance_but_relational_rules`` lets through a rejection of schema-valid data only for a rule
between two fields or about tokens (the messages in :data:`RELATIONAL`), each stated in the route's description:

* ``/search``: ``n`` no more than ``k`` (the server's default k when the request gives none);
* ``/v1/rerank`` with ``rank_fields``: an object document needs at least one of the fields that list names, each
  a string (the keys come from another field's values);
* TEI's ``truncate=false`` and Voyage's ``truncation=false``: an input longer than the model's maximum in tokens.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import positive_data_acceptance

HOOKS = Path(__file__).resolve()
CONFIG = HOOKS.with_name("schemathesis.toml")
SHORT_DEADLINE_MS = 1000.0
EXCLUDED_CHECKS = ("not_a_server_error", "positive_data_acceptance")
# (route, status, message pattern, request condition) for schema-valid data the server may reject
RELATIONAL: tuple[tuple[str, int, str, str | None], ...] = (
    ("/search", 400, r"^n=\d+ is more than k=\d+", None),
    ("/v1/rerank", 422, r"documents\[\d+\](\.[\s\S]* must be a string| has none of the rank_fields)", "rank_fields"),
    ("/rerank", 422, r"is longer than the model's maximum of \d+ tokens; set truncate=true", "truncate"),
    ("/v1/rerank", 422, r"is longer than the model's maximum of \d+ tokens; set truncation=true", "truncation"),
)


def st_command(url: str, *, key: str, max_examples: int, seed: int, workers: int = 2, narrow: bool = True) -> list[str]:
    """``st run`` over every operation with every check (``narrow``: the two above in place of the built-ins, and
    ``schemathesis.toml``), bounded and seeded. The executable is ``st`` next to the running interpreter."""
    st = str(Path(sys.executable).with_name("st"))
    command = [st, *(["--config-file", str(CONFIG)] if narrow else []), "run", f"{url}/openapi.json",
               "--checks", "all", "--max-examples", str(max_examples), "--seed", str(seed), "--workers", str(workers),
               "-H", f"Authorization: Bearer {key}", "--generation-database", "none", "--continue-on-failure",
               "--request-timeout", "30", "--no-color"]
    if narrow:
        command += ["--exclude-checks", ",".join(EXCLUDED_CHECKS)]
    return command


def _sent(response: Any) -> tuple[str, dict[str, Any] | None, dict[str, str]]:
    """The path, JSON body (None when not an object) and headers of the request that got ``response``."""
    request = response.request
    path = re.sub(r"^https?://[^/]+", "", request.url or "").split("?")[0]
    raw = request.body
    body = None
    if raw:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
    return path, body if isinstance(body, dict) else None, {k.lower(): v for k, v in request.headers.items()}


def _message(response: Any) -> str:
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(body, dict):
        return ""
    return str(body.get("error") or body.get("message") or body.get("detail") or "")


def _client_deadline(body: dict[str, Any] | None, headers: dict[str, str]) -> float | None:
    """The deadline the server used when the client gave one: the body's, else the header's."""
    value = (body or {}).get("deadline_ms")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(headers["x-crossrank-deadline-ms"])
    except (KeyError, ValueError):
        return None


@schemathesis.check
def not_a_server_error_but_client_deadlines(ctx: Any, response: Any, case: Any) -> bool | None:
    try:
        return not_a_server_error(ctx, response, case)
    except Failure:
        _, body, headers = _sent(response)
        deadline = _client_deadline(body, headers)
        if (response.status_code == 504 and "deadline" in _message(response) and deadline is not None
                and deadline < SHORT_DEADLINE_MS):
            return None
        raise


@schemathesis.check
def positive_data_acceptance_but_relational_rules(ctx: Any, response: Any, case: Any) -> bool | None:
    try:
        return positive_data_acceptance(ctx, response, case)
    except Failure:
        path, body, _ = _sent(response)
        message = _message(response)
        for route, status, pattern, field in RELATIONAL:
            if path != route or response.status_code != status or not re.search(pattern, message):
                continue
            if field is None or (body is not None and body.get(field) is not None):
                return None
        raise
