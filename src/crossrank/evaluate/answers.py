"""Answer accuracy: is a gold answer in the N passages an LLM would get, and does an LLM answer correctly from them?

``answer_in_top_n`` needs no model: a query counts as answered at N when a gold answer string (SQuAD-normalised, as
whole tokens) occurs in the title or text of one of its first N passages.

``LLMClient`` talks to any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint (OpenAI, vLLM,
llama.cpp server, Ollama's /v1, ...). Configuration comes from options or the environment:
``CROSSRANK_LLM_BASE_URL`` (e.g. ``http://localhost:8000/v1``), ``CROSSRANK_LLM_MODEL``, ``CROSSRANK_LLM_API_KEY``
(falls back to ``OPENAI_API_KEY``), ``CROSSRANK_LLM_TIMEOUT_S``, ``CROSSRANK_LLM_CONCURRENCY``. Requests run in a
bounded thread pool with a per-request timeout and retries (with back-off) on connection errors, 429 and 5xx. An
answer is scored by normalised exact match and by "contains" (a gold answer occurs in the reply as whole tokens).
Replies are cached on disk keyed by (question id, the exact passage ids in order), so configurations that hand
the LLM the same passages share one call.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from crossrank.errors import InputError
from crossrank.evaluate._util import short_hash, slug
from crossrank.evaluate.metrics import answer_match, contains_answer, normalize_answer

PROMPT_VERSION = 1
SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages given. Reply with the shortest possible answer "
    "(a few words, copied from the passages where possible), with no explanation. If the passages do not "
    "contain the answer, reply: unknown"
)


def build_messages(question: str, passages: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Chat messages: the instruction, then the N passages ``[i] title\\ntext`` and the question."""
    blocks = []
    for i, (title, text) in enumerate(passages, start=1):
        head = f"[{i}] {title}".rstrip()
        blocks.append(f"{head}\n{text}")
    user = "Passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\nAnswer:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ---------------------------------------------------------------------------------------------- answer in top N
class PassageMatcher:
    """Answers-in-passage checks with the normalised passage text computed once per passage id."""

    def __init__(self) -> None:
        self._norm: dict[str, str] = {}

    def normalized(self, pid: str, title: str, text: str) -> str:
        n = self._norm.get(pid)
        if n is None:
            n = normalize_answer(f"{title} {text}" if title else text)
            self._norm[pid] = n
        return n

    def first_hit(self, answers_norm: Sequence[str], passages: Sequence[tuple[str, str, str]]) -> int | None:
        """0-based position of the first passage ``(id, title, text)`` containing an answer, or None."""
        for pos, (pid, title, text) in enumerate(passages):
            if contains_answer(self.normalized(pid, title, text), answers_norm):
                return pos
        return None


def answer_in_top_n(
    lists: Mapping[str, Sequence[tuple[str, str, str]]],
    answers: Mapping[str, Sequence[str]],
    ns: Sequence[int],
    matcher: PassageMatcher | None = None,
) -> dict[int, float]:
    """Share of questions (those with gold answers) whose first N passages ``(id, title, text)`` hold an answer."""
    return share_in_top_n(answer_first_hits(lists, answers, max(ns), matcher), ns)


def share_in_top_n(first_hits: Mapping[str, int | None], ns: Sequence[int]) -> dict[int, float]:
    """Share of questions whose first answer-holding passage (:func:`answer_first_hits`) is among the first N."""
    if not first_hits:
        return {n: 0.0 for n in ns}
    return {n: sum(1 for f in first_hits.values() if f is not None and f < n) / len(first_hits) for n in ns}


def answer_first_hits(
    lists: Mapping[str, Sequence[tuple[str, str, str]]],
    answers: Mapping[str, Sequence[str]],
    depth: int,
    matcher: PassageMatcher | None = None,
) -> dict[str, int | None]:
    """Per question with gold answers: the 0-based position of the first of its first ``depth`` passages that holds
    an answer, None when none does (what paired answer-in-top-N comparisons are made from)."""
    matcher = matcher or PassageMatcher()
    return {q: matcher.first_hit([normalize_answer(a) for a in answers[q]], lists[q][:depth])
            for q in lists if answers.get(q)}


# ---------------------------------------------------------------------------------------------- LLM client
@dataclass
class LLMConfig:
    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    concurrency: int = 4
    max_retries: int = 2
    temperature: float = 0.0
    max_tokens: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None) -> "LLMConfig":
        o = dict(options or {})
        env = os.environ
        base_url = o.get("base_url") or env.get("CROSSRANK_LLM_BASE_URL")
        model = o.get("model") or env.get("CROSSRANK_LLM_MODEL")
        if not base_url or not model:
            raise InputError(
                "LLM answer evaluation needs a base_url and a model: pass llm={'base_url': ..., 'model': ...} or set "
                "CROSSRANK_LLM_BASE_URL and CROSSRANK_LLM_MODEL"
            )
        try:
            cfg = cls(
                base_url=str(base_url).rstrip("/"),
                model=str(model),
                api_key=o.get("api_key") or env.get("CROSSRANK_LLM_API_KEY") or env.get("OPENAI_API_KEY"),
                timeout_s=float(o.get("timeout_s", env.get("CROSSRANK_LLM_TIMEOUT_S", 60.0))),
                concurrency=int(o.get("concurrency", env.get("CROSSRANK_LLM_CONCURRENCY", 4))),
                max_retries=int(o.get("max_retries", 2)),
                temperature=float(o.get("temperature", 0.0)),
                max_tokens=int(o.get("max_tokens", 64)),
                extra=dict(o.get("extra", {})),
            )
        except (TypeError, ValueError) as e:
            raise InputError(f"bad LLM option: {e}") from None
        if cfg.concurrency < 1 or cfg.timeout_s <= 0:
            raise InputError("LLM concurrency must be >= 1 and timeout_s > 0")
        return cfg

    def public(self) -> dict[str, Any]:
        """What goes into results.json (never the API key)."""
        return {"base_url": self.base_url, "model": self.model, "timeout_s": self.timeout_s,
                "concurrency": self.concurrency, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "prompt_version": PROMPT_VERSION}


class LLMClient:
    """A small synchronous OpenAI-compatible chat client (thread-safe; one connection pool)."""

    def __init__(self, config: LLMConfig) -> None:
        import httpx

        self.config = config
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._httpx = httpx
        self._client = httpx.Client(
            timeout=httpx.Timeout(config.timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )

    def close(self) -> None:
        self._client.close()

    def chat(self, messages: list[dict[str, str]]) -> str:
        body = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens, **self.config.extra}
        url = f"{self.config.base_url}/chat/completions"
        last: Exception | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            try:
                r = self._client.post(url, json=body)
            except self._httpx.HTTPError as e:  # timeouts and connection errors
                last = e
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                continue
            if r.status_code >= 400:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
            try:
                data = r.json()
                content = data["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise RuntimeError(f"unexpected chat completion response: {r.text[:300]}") from e
            return str(content or "")
        raise RuntimeError(f"LLM request failed after {self.config.max_retries + 1} tries: {last}")


class LLMAnswerCache:
    """JSONL ``{"key", "answer"}`` lines; key = sha1(qid, passage ids)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.answers: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.answers[row["key"]] = row["answer"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        self._lock = threading.Lock()

    @staticmethod
    def key(qid: str, passage_ids: Sequence[str]) -> str:
        return hashlib.sha1(json.dumps([qid, list(passage_ids)]).encode("utf-8")).hexdigest()

    def put(self, key: str, answer: str) -> None:
        with self._lock:
            self.answers[key] = answer
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")


def llm_cache_path(out_dir: Path, config: LLMConfig) -> Path:
    return Path(out_dir) / "cache" / (
        f"llm-{slug(config.model)}-{short_hash(config.base_url, config.model, PROMPT_VERSION, config.temperature, config.max_tokens)}.jsonl"
    )


def llm_answer_accuracy(
    requests: Mapping[str, tuple[str, str, Sequence[tuple[str, str, str]]]],
    answers: Mapping[str, Sequence[str]],
    config: LLMConfig,
    *,
    cache: LLMAnswerCache | None = None,
    on_done: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Ask the LLM each request ``{request_id: (qid, question, [(passage_id, title, text), ...])}`` once
    (deduplicated by (qid, passage ids) and answered from ``cache`` where possible).

    Returns ``{request_id: {"answer", "exact", "contains", "error"}}``."""
    by_key: dict[str, tuple[str, str, Sequence[tuple[str, str, str]]]] = {}
    req_key: dict[str, str] = {}
    for rid, (qid, question, passages) in requests.items():
        key = LLMAnswerCache.key(qid, [p[0] for p in passages])
        req_key[rid] = key
        by_key.setdefault(key, (qid, question, passages))
    got: dict[str, str] = {}
    errors: dict[str, str] = {}
    todo = []
    for key, item in by_key.items():
        if cache is not None and key in cache.answers:
            got[key] = cache.answers[key]
            if on_done:
                on_done()
        else:
            todo.append((key, item))
    if todo:
        client = LLMClient(config)
        try:
            with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
                futures = {
                    pool.submit(client.chat, build_messages(q, [(t, x) for _, t, x in ps])): key
                    for key, (_, q, ps) in todo
                }
                for fut in as_completed(futures):
                    key = futures[fut]
                    try:
                        ans = fut.result()
                        got[key] = ans
                        if cache is not None:
                            cache.put(key, ans)
                    except Exception as e:  # noqa: BLE001 - one failed question must not stop the evaluation
                        errors[key] = f"{type(e).__name__}: {e}"[:300]
                    if on_done:
                        on_done()
        finally:
            client.close()
    out: dict[str, dict[str, Any]] = {}
    for rid, key in req_key.items():
        qid = requests[rid][0]
        if key in got:
            m = answer_match(got[key], answers.get(qid, []))
            out[rid] = {"answer": got[key], "exact": m["exact"], "contains": m["contains"], "error": None}
        else:
            out[rid] = {"answer": None, "exact": False, "contains": False, "error": errors.get(key, "no answer")}
    return out
