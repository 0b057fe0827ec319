"""How a causal-LM reranker reads a (query, document) pair: its prompt and the next-token logits that score it.

Rerankers such as Qwen3-Reranker and bge-reranker-v2-gemma are language models asked a yes/no question about
the pair; relevance is read from the logits of the answer tokens at the last position of the prompt. A
:class:`PromptFormat` says what that prompt is, as pieces the engine tokenises separately and joins:

``prefix`` + query part + ``separator`` + document part + ``suffix``

(a fixed piece given as a list of strings is tokenised string by string, for formats whose reference code
does so).

The query part is ``query`` with ``{instruction}`` and ``{query}`` filled in, the document part is ``document``
with ``{document}``. Only the document part is ever cut (from its end, then the query part, at half the length):
the fixed pieces, which hold the chat template, always reach the model whole. ``prefix`` may start with the
tokenizer's beginning-of-sequence token (``bos=True``).

Relevance logit: ``logit(true_token) - logit(false_token)`` (the log-odds of "yes" against "no": its sigmoid
is the softmax probability of "yes" over the two, as the models' authors score), or ``logit(true_token)``
alone when ``false_token`` is None (bge-reranker-v2-gemma's score).

Where a format comes from, first match wins (:func:`resolve_prompt_format`): the caller's ``prompt_format``
(a built-in name, a dict or a JSON file), the checkpoint's own ``crossrank_prompt.json``, the checkpoint's chat
template when it renders a ``query`` and a ``document`` message (the sentence-transformers layout for causal
rerankers, with its ``LogitScore`` answer tokens where the checkpoint has that module, else "yes" / "no"), then
the built-in table by the model's name.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from crossrank.errors import InputError, ModelLoadError

PROMPT_FILE = "crossrank_prompt.json"


@dataclass(frozen=True)
class PromptFormat:
    """A causal-LM reranker's prompt and scoring tokens (see the module docstring)."""

    name: str
    query: str
    document: str
    true_token: str
    prefix: str | tuple[str, ...] = ""
    separator: str | tuple[str, ...] = ""
    suffix: str | tuple[str, ...] = ""
    false_token: str | None = None
    default_instruction: str | None = None
    bos: bool = False

    def __post_init__(self) -> None:
        for key in ("prefix", "separator", "suffix"):  # lists (from JSON) become tuples: the format stays hashable
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
            if not isinstance(getattr(self, key), (str, tuple)) or any(
                    not isinstance(v, str) for v in ((value,) if isinstance(value, str) else value)):
                raise InputError(f"prompt format {self.name!r}: {key} must be a string or a list of strings")
        if "{query}" not in self.query:
            raise InputError(f"prompt format {self.name!r}: 'query' must contain {{query}}")
        if "{document}" not in self.document:
            raise InputError(f"prompt format {self.name!r}: 'document' must contain {{document}}")
        if "{instruction}" in self.query and not self.default_instruction:
            raise InputError(f"prompt format {self.name!r} takes an {{instruction}}: give a default_instruction")

    @property
    def takes_instruction(self) -> bool:
        return "{instruction}" in self.query

    def query_text(self, query: str, instruction: str | None) -> str:
        """The query part for ``query``; ``instruction`` None means the format's default."""
        if instruction is not None and not self.takes_instruction:
            raise InputError(f"this reranker's prompt ({self.name}) takes no instruction")
        if not self.takes_instruction:
            return self.query.replace("{query}", query)
        return self.query.replace("{instruction}", instruction or self.default_instruction or "").replace(
            "{query}", query)

    def document_text(self, document: str) -> str:
        return self.document.replace("{document}", document)

    @staticmethod
    def pieces(value: "str | tuple[str, ...]") -> tuple[str, ...]:
        """A fixed piece as the strings tokenised one by one."""
        return (value,) if isinstance(value, str) else tuple(value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PromptFormat":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown prompt format field(s): {', '.join(sorted(unknown))}")
        missing = {"query", "document", "true_token"} - set(d)
        if missing:
            raise InputError(f"a prompt format needs {', '.join(sorted(missing))}")
        return cls(**{"name": "custom", **dict(d)})


# The published formats. Sources: the models' cards and reference code (Qwen/Qwen3-Reranker-*: the official
# transformers usage; BAAI/bge-reranker-v2-gemma: FlagEmbedding's FlagLLMReranker).
_QWEN3_SYSTEM = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
                 'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
BUILTIN: dict[str, PromptFormat] = {
    "qwen3-reranker": PromptFormat(
        name="qwen3-reranker",
        prefix=_QWEN3_SYSTEM,
        query="<Instruct>: {instruction}\n<Query>: {query}\n",
        document="<Document>: {document}",
        suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        true_token="yes",
        false_token="no",
        default_instruction="Given a web search query, retrieve relevant passages that answer the query",
    ),
    "bge-reranker-v2-gemma": PromptFormat(
        name="bge-reranker-v2-gemma",
        bos=True,
        query="A: {query}",
        separator="\n",
        document="B: {document}",
        suffix=("\n", "Given a query A and a passage B, determine whether the passage contains an answer to the "
                      "query by providing a prediction of either 'Yes' or 'No'."),
        true_token="Yes",
    ),
}
# Model names (hub ids or folder names) each built-in format is picked for when the checkpoint does not say.
_NAME_PATTERNS = [
    (re.compile(r"qwen3[-_]?reranker", re.I), "qwen3-reranker"),
    (re.compile(r"bge[-_]reranker[-_]v2[-_](gemma|minicpm)", re.I), "bge-reranker-v2-gemma"),
]


def builtin_for_name(name: str) -> PromptFormat | None:
    for pattern, key in _NAME_PATTERNS:
        if pattern.search(name):
            return BUILTIN[key]
    return None


def parse_prompt_format(spec: "str | Mapping[str, Any] | PromptFormat") -> PromptFormat:
    """A built-in name, a dict of :class:`PromptFormat` fields, or the path of a JSON file holding one."""
    if isinstance(spec, PromptFormat):
        return spec
    if isinstance(spec, Mapping):
        return PromptFormat.from_dict(spec)
    if isinstance(spec, str):
        if spec in BUILTIN:
            return BUILTIN[spec]
        path = Path(spec).expanduser()
        if path.is_file():
            return _read(path)
        raise InputError(f"prompt format {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor a JSON file")
    raise InputError(f"prompt_format must be a name, a dict or a JSON path, not {type(spec).__name__}")


def _read(path: Path) -> PromptFormat:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the prompt format {path}: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object of prompt format fields")
    return PromptFormat.from_dict({"name": path.parent.name or "custom", **data})


def resolve_prompt_format(override: "str | Mapping[str, Any] | PromptFormat | None", model_dir: Path | None,
                          name: str, tokenizer: Any = None) -> PromptFormat | None:
    """The prompt format of a causal-LM reranker (module docstring: where it comes from); None if unknown."""
    if override is not None:
        return parse_prompt_format(override)
    if model_dir is not None and (model_dir / PROMPT_FILE).is_file():
        return _read(model_dir / PROMPT_FILE)
    from_template = from_chat_template(tokenizer, model_dir, name) if tokenizer is not None else None
    return from_template or builtin_for_name(name)


# Stand-ins rendered through a chat template to find where the query, the document and the task go.
_QUERY, _DOCUMENT, _TASK = "\x00crossrank-query\x00", "\x00crossrank-document\x00", "\x00crossrank-task\x00"


def from_chat_template(tokenizer: Any, model_dir: Path | None, name: str) -> PromptFormat | None:
    """The format a chat template with ``query`` and ``document`` roles (and an optional ``task``) renders, as
    sentence-transformers feeds causal rerankers; None when the template has no such roles. The query part ends
    at the last line break before the document, so the two are tokenised apart where tokenizers split anyway."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or "query" not in template or "document" not in template:
        return None
    messages = [{"role": "query", "content": _QUERY}, {"role": "document", "content": _DOCUMENT}]
    try:
        with_task = tokenizer.apply_chat_template(messages, tokenize=False, task=_TASK)
        plain = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render these roles is not this layout
        return None
    if not isinstance(with_task, str) or not (0 <= with_task.find(_QUERY) < with_task.find(_DOCUMENT)):
        return None
    head, rest = with_task.split(_QUERY, 1)
    between, suffix = rest.split(_DOCUMENT, 1)
    cut = between.rfind("\n") + 1
    query_tail, doc_head = between[:cut], between[cut:]
    query, default = "{query}", None
    if _TASK in head:
        head, after_task = head.split(_TASK, 1)
        plain_head = plain.split(_QUERY, 1)[0]
        if not (plain_head.startswith(head) and plain_head.endswith(after_task)):
            return None
        default = plain_head[len(head): len(plain_head) - len(after_task)] or None
        if default is None:  # the template writes nothing without a task: nothing to default to
            return None
        query = "{instruction}" + after_task + query
    cut = head.rfind("\n") + 1  # the fixed prefix ends at a line break too; the rest of its line joins the query
    true_token, false_token = _logit_score_tokens(tokenizer, model_dir)
    return PromptFormat(name=f"chat template of {Path(name).name}", prefix=head[:cut],
                        query=head[cut:] + query + query_tail, document=doc_head + "{document}", suffix=suffix,
                        true_token=true_token, false_token=false_token, default_instruction=default)


def _logit_score_tokens(tokenizer: Any, model_dir: Path | None) -> tuple[str, str | None]:
    """The answer tokens of a sentence-transformers ``LogitScore`` module in the checkpoint, else yes / no (what
    sentence-transformers assumes for a causal reranker without one)."""
    modules = _json(model_dir / "modules.json") if model_dir is not None else None
    for m in modules if isinstance(modules, list) else []:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("LogitScore"):
            cfg = _json(model_dir / str(m.get("path", "")) / "config.json") or {}
            true_id, false_id = cfg.get("true_token_id"), cfg.get("false_token_id")
            if isinstance(true_id, int):
                false = tokenizer.decode([false_id]) if isinstance(false_id, int) else None
                return tokenizer.decode([true_id]), false
    return "yes", "no"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
