"""The local cross-encoder engine: any Hugging Face sequence-classification reranker, scored fast and safely.

What it does on each call:

1. tokenises the query once and all documents in one batch (no special tokens), then builds each pair from token
   ids with the tokenizer's own pair template (special tokens and token types read from the tokenizer's
   post-processor and checked against ``tokenizer(query, text)`` at load time), so the model sees exactly what
   ``sentence_transformers.CrossEncoder`` would feed it;
2. truncates the document first and never drops the query (a query longer than about half of ``max_length`` is
   cut to that and reported); with ``long_documents="chunk"`` a long document is split into windows that each
   carry the full query and its score is the best window's; with ``long_documents="focus"`` it is one window of
   its first sentence and the sentences that share the most query terms (:mod:`crossrank.rerank.focus`);
3. sorts pairs by length and packs batches under a token budget (padded length x batch size; on CPU at most
   ``CPU_PASS_TOKENS`` = 1024 per pass, which keeps activations cache-resident and measured 1.1-1.3x faster than
   16384-token passes, and at most 64 MB of attention scores per batch), pads per batch, runs the batch through
   the backend behind a lock, and puts scores back in input order.

Backends (``backend=``, see :mod:`crossrank.rerank.backends`): ``torch`` (the module in its dtype: fp16 on CUDA,
fp32 or bf16 on CPU), ``torch-int8`` (dynamic int8 Linear), ``onnx`` (ONNX Runtime fp32 on a graph exported once,
with fused attention / LayerNorm / GELU, cached on disk by weights hash), ``onnx-int8`` (that graph with dynamic
int8 quantisation), ``auto``. ``auto`` is ``torch`` on CUDA (fp16) and for an explicit bf16/fp16, ``torch`` bf16 on
CPUs with AMX / AVX512-BF16 (not measured here), and ``onnx`` fp32 on other CPUs when onnxruntime is installed
(else ``torch``). Measured on a 2-core AMD EPYC (Zen 3, AVX2 only, no VNNI/AMX) with the bundled MiniLM-L6
(max_length 160, SciFact hybrid top-100, alternating backends, medians; benchmarks/README.md has the tables):
``onnx`` is about 1.15x ``torch`` fp32 with identical rankings; int8 is about 1.4-1.7x faster but moves SciFact
nDCG@10 by 0.02-0.09 and changes the top-10 order of every query (activation outliers of MiniLM under per-tensor
dynamic activation scales), so ``auto`` does not pick it; bf16 runs about 4x slower than fp32 on that CPU (no native
bf16). With ``torch-int8`` / ``onnx-int8`` a pair's score also depends slightly on the other pairs in its batch
(activation scales are per batch). Non-torch backends snapshot the weights at construction: a module trained further
afterwards needs a new engine (or ``backend="torch"``).

Loading accepts safetensors only and refuses anything that is not a sequence-classification model (including an
encoder to which transformers would silently attach a random head) unless ``allow_new_head=True`` (training), or
a causal language model with a known reranking prompt (Qwen3-Reranker, bge-reranker-v2-gemma, or any
``prompt_format=``; :mod:`crossrank.rerank.prompts`), which is scored by its answer-token logits
(:mod:`crossrank.rerank.causal`). Checkpoints that need code from their repository load only with
``trust_remote_code=True``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from crossrank.errors import InputError, ModelLoadError, RerankTimeout, check_query, first_line
from crossrank.rerank.base import (
    LONG_DOCUMENT_MODES,
    InputCount,
    RankedText,
    Reranker,
    RerankScores,
    check_instruction,
    check_texts,
    rank_by_scores,
)
from crossrank.rerank.calibration import Calibration
from crossrank.rerank.device import DTYPE_NAMES, cpu_has_fast_bf16, dtype_name, resolve_device, resolve_dtype
from crossrank.rerank.focus import SentenceFocus
from crossrank.rerank.loading import load_reranker_model
from crossrank.rerank.prompts import PromptFormat
from crossrank.rerank.template import PairTemplate

log = logging.getLogger(__name__)

_ACTIVATIONS = ("auto", "sigmoid", "raw")
_VARIANT_OPTIONS = ("long_documents", "chunk_overlap", "max_chunks")  # what with_options can change
# A document longer than this many characters per token of budget is cut (at whitespace) before tokenising;
# if the cut text turns out to have too few tokens it is re-tokenised whole, so the result is exact. Tokenising
# is a tenth of a small model's time: at 7, about 1 text in 1,000 of the corpora in ../shared/data is re-tokenised.
_CHARS_PER_TOKEN = 7
# On CPU, at most this many bytes of attention scores per batch (batch x heads x width^2 x 4): bounds peak memory
# for long inputs (32 x 512-token pairs of a 12-head model would otherwise need 400 MB per layer's scores).
ATTENTION_BUDGET_BYTES = 64 << 20
# On CPU, forward passes of at most this many padded tokens (``batch_tokens`` stays the upper bound): activations
# then stay cache-resident; measured 1.1-1.3x faster than 16384-token passes for MiniLM-L6 on a 2-core Zen 3.
CPU_PASS_TOKENS = 1024
# Default max_length of causal-LM rerankers (their models allow far more; a user with long documents raises it).
CAUSAL_DEFAULT_MAX_LENGTH = 1024
# Model types whose learned position ids start at padding_idx + 1 (create_position_ids_from_input_ids): a table of
# N entries holds N - padding_idx - 1 tokens.
_PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text")


# --------------------------------------------------------------------------------------------------- engine


class CrossEncoderReranker:
    """A local cross-encoder reranker. Thread-safe (one forward pass at a time).

    >>> rr = CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L6-v2")   # doctest: +SKIP
    >>> rr.rerank("what do plants make?", ["Plants make glucose.", "Volcanoes erupt."], top_n=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        *,
        max_length: int | None = None,
        batch_tokens: int = 16384,
        max_batch_size: int = 128,
        dtype: str = "auto",
        device: str = "auto",
        activation: str = "auto",
        num_threads: int | None = None,
        long_documents: str = "truncate",
        chunk_overlap: int = 64,
        max_chunks: int = 16,
        allow_new_head: bool = False,
        num_labels: int | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
        name: str | None = None,
        backend: str = "auto",
        calibration: "Calibration | dict | None" = None,
        prompt_format: "str | dict | PromptFormat | None" = None,
    ) -> None:
        model, tokenizer, loaded_name, prompt = load_reranker_model(
            model_name_or_path,
            allow_new_head=allow_new_head,
            num_labels=num_labels,
            local_files_only=local_files_only,
            revision=revision,
            trust_remote_code=trust_remote_code,
            prompt_format=prompt_format,
        )
        self._setup(
            model, tokenizer, name=name or loaded_name, max_length=max_length, batch_tokens=batch_tokens,
            max_batch_size=max_batch_size, dtype=dtype, device=device, activation=activation,
            num_threads=num_threads, long_documents=long_documents, chunk_overlap=chunk_overlap,
            max_chunks=max_chunks, backend=backend, calibration=calibration, prompt=prompt,
        )

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, name: str, **options: Any) -> "CrossEncoderReranker":
        """Wrap an already loaded ``(model, tokenizer)`` (the bundled model, a model being trained).

        The model is moved and cast in place to the resolved device and dtype (pass ``dtype="fp32"`` to keep a
        model being trained in fp32); it is put in eval mode. Only ``backend="torch"`` keeps following later
        in-place weight updates; the other backends run a snapshot taken now (pass ``backend="torch"`` while
        training)."""
        self = cls.__new__(cls)
        defaults = dict(
            max_length=None, batch_tokens=16384, max_batch_size=128, dtype="auto", device="auto",
            activation="auto", num_threads=None, long_documents="truncate", chunk_overlap=64, max_chunks=16,
            backend="auto", calibration=None,
        )
        unknown = set(options) - set(defaults)
        if unknown:
            raise InputError(f"unknown reranker option(s): {', '.join(sorted(unknown))}")
        self._setup(model, tokenizer, name=name, **{**defaults, **options})
        return self

    # ---------------------------------------------------------------- setup

    def _setup(
        self, model, tokenizer, *, name, max_length, batch_tokens, max_batch_size, dtype, device, activation,
        num_threads, long_documents, chunk_overlap, max_chunks, backend="auto", calibration=None, prompt=None,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise InputError(f"activation must be one of {', '.join(_ACTIVATIONS)}, not {activation!r}")
        _check_long_documents(long_documents, prompt)
        if int(batch_tokens) < 1 or int(max_batch_size) < 1:
            raise InputError("batch_tokens and max_batch_size must be positive")
        if num_threads is not None:
            if int(num_threads) < 1:
                raise InputError("num_threads must be positive")
            torch.set_num_threads(int(num_threads))  # process-wide: torch has one intra-op pool

        config = model.config
        self.num_labels = int(getattr(config, "num_labels", 1))
        if self.num_labels not in (1, 2):
            raise ModelLoadError(
                f"{name} has {self.num_labels} output labels; a reranker needs 1 (relevance logit) or 2 "
                "(not relevant / relevant)"
            )
        self.name = str(name)
        self.prompt: PromptFormat | None = prompt
        self.device = resolve_device(device)
        requested_backend = backend
        self.backend = self._resolve_backend(backend, dtype)
        # the dtype the arithmetic runs in: torch's own, or OpenVINO's inference precision (its graph is fp32)
        own_dtype = self.backend in ("torch", "openvino")
        self._compute_dtype = resolve_dtype(dtype, self.device) if own_dtype else torch.float32
        self.dtype = self._compute_dtype if self.backend == "torch" else torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self._num_threads = int(num_threads) if num_threads is not None else None
        self.tokenizer = tokenizer
        self.activation = self._resolve_activation(activation, config)
        # "sigmoid" scores are calibration.prob(logit): the plain sigmoid unless the model ships a calibration
        self.calibration = Calibration.parse(calibration)
        # what the model's publisher recommends around the scores (final-order fusion, relevance threshold);
        # set by the bundle loader, shown in info()
        self.recommended: dict[str, Any] = {}
        self.long_documents = long_documents
        self._focus: SentenceFocus | None = None
        self.batch_tokens = int(batch_tokens)
        self.max_batch_size = int(max_batch_size)
        self.max_chunks = max(1, int(max_chunks))
        self._lock = threading.Lock()
        self._heads = int(getattr(config, "num_attention_heads", 12) or 12)
        self._attn_budget = ATTENTION_BUDGET_BYTES if self.device.type == "cpu" else 0
        on_cpu = self.device.type == "cpu"
        self.pass_tokens = min(self.batch_tokens, CPU_PASS_TOKENS) if on_cpu else self.batch_tokens

        self._setup_tokenizer(tokenizer, prompt)
        limit = _length_limit(config, tokenizer, name, max_length, prompt)  # refuses a max_length beyond positions
        self.max_length = int(max_length) if max_length else limit
        if self.max_length <= self.template.n_special + 2:
            raise InputError(f"max_length={self.max_length} leaves no room for a query and a document")
        self._avail = self.max_length - self.template.n_special
        self._query_max = self._avail // 2
        self.chunk_overlap = max(0, min(int(chunk_overlap), self._avail // 4))
        if prompt is None:
            self._check_template()
        self._runner, self._backend_info = self._make_runner(requested_backend)

    def _setup_tokenizer(self, tokenizer: Any, prompt: PromptFormat | None) -> None:
        """Tokenizer plumbing: a private copy of the fast backend without padding/truncation (tokenizer.json
        files often carry both), the pair template, and which inputs the model takes."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(backend.to_str())
            self._backend.no_padding()
            self._backend.no_truncation()
        self.template = self._derive_template()
        self._use_token_types = prompt is None and "token_type_ids" in getattr(
            tokenizer, "model_input_names", ["token_type_ids"])
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = int(pad) if pad is not None else 0

    def _resolve_backend(self, backend: str, dtype: Any) -> str:
        from crossrank.rerank.backends import resolve_backend

        requested = dtype_name(dtype)
        allowed = ("auto", "fp32", "bf16") if str(backend or "").lower() == "openvino" else ("auto", "fp32")
        if requested not in allowed and str(backend or "auto").lower() not in ("auto", "torch"):
            raise InputError(f"backend {backend!r} runs fp32 / int8; dtype={dtype!r} needs backend='torch'")
        if self.prompt is not None and str(backend or "auto").lower() == "auto":
            return "torch"  # LLM rerankers: no ONNX graph is built unasked (export of a decoder is slow and large)
        try:
            return resolve_backend(backend, self.device.type, dtype_requested=requested,
                                   fast_bf16=self.device.type == "cpu" and cpu_has_fast_bf16())
        except ValueError as e:
            raise InputError(str(e)) from e

    def _make_runner(self, requested: str):
        """The runner for ``self.backend``; an ``auto`` choice that cannot be built falls back to torch."""
        from crossrank.rerank.backends import make_runner

        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self._use_token_types else [])
        try:
            return make_runner(self.backend, self.model, device=self.device, input_names=names,
                               num_threads=self._num_threads, name=self.name,
                               bf16=self._compute_dtype == torch.bfloat16)
        except Exception as e:
            if str(requested or "auto").lower() != "auto" or self.backend == "torch":
                if isinstance(e, (InputError, ModelLoadError)):
                    raise
                raise ModelLoadError(f"cannot set up backend {self.backend!r} for {self.name}: {first_line(e)}") from e
            log.warning("backend %s unavailable for %s (%s); falling back to torch %s", self.backend, self.name,
                        first_line(e), DTYPE_NAMES.get(self._compute_dtype, str(self._compute_dtype)))
            self.backend, self.dtype = "torch", self._compute_dtype
            self.model = self.model.to(dtype=self.dtype)
            return make_runner("torch", self.model, device=self.device, input_names=names,
                               num_threads=self._num_threads, name=self.name)

    def _resolve_activation(self, activation: str, config: Any) -> str:
        if activation != "auto":
            return activation
        st = getattr(config, "sentence_transformers", None)
        fn = st.get("activation_fn") if isinstance(st, dict) else None
        fn = fn or getattr(config, "sbert_ce_default_activation_function", None)
        if isinstance(fn, str) and fn.endswith("Identity"):
            return "raw"
        return "sigmoid"

    def _derive_template(self) -> PairTemplate:
        if self.prompt is not None:
            return PairTemplate.from_prompt(self.prompt, self.tokenizer, self._encode)
        try:
            if self._backend is not None:
                return PairTemplate.from_fast(self._backend)
            return PairTemplate.from_python(self.tokenizer)
        except (ValueError, AttributeError, TypeError) as e:
            raise ModelLoadError(f"cannot work out how the tokenizer of {self.name} joins a pair: {e}") from e

    def _check_template(self) -> None:
        """Our ids must equal what ``tokenizer(query, text)`` builds (what sentence-transformers feeds)."""
        q, d = "What is the capital of France?", "Paris is the capital and largest city of France."
        ref = self.tokenizer(q, d)
        ids, types = self.template.build(self._encode([q])[0], self._encode([d])[0])
        ok = list(ref["input_ids"]) == ids
        if ok and self._use_token_types and "token_type_ids" in ref:
            ok = list(ref["token_type_ids"]) == types
        if not ok:
            raise ModelLoadError(f"the pair template derived for {self.name}'s tokenizer does not match it")

    # ---------------------------------------------------------------- tokenising

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def _encode_docs(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of documents (in the prompt's document part, for a causal-LM reranker); very long texts are
        cut at whitespace first when that changes nothing we keep."""
        if self.prompt is not None:
            texts = [self.prompt.document_text(t) for t in texts]
        if self.long_documents in ("chunk", "focus"):  # focus picks sentences from as much text as chunk scores
            need = self._avail + (self.max_chunks - 1) * max(1, self._avail - self.chunk_overlap)
        else:
            need = self._avail
        limit = need * _CHARS_PER_TOKEN
        clipped, cut = [], []
        for t in texts:
            c = _clip_at_whitespace(t, limit)
            clipped.append(c)
            cut.append(len(c) < len(t))
        out = self._encode(clipped)
        redo = [i for i, ids in enumerate(out) if cut[i] and len(ids) <= need]
        if redo:
            for i, ids in zip(redo, self._encode([texts[i] for i in redo]), strict=True):
                out[i] = ids
        return out

    @property
    def takes_instruction(self) -> bool:
        """Whether this model's prompt has room for a task instruction (``score(..., instruction=...)``)."""
        return self.prompt is not None and self.prompt.takes_instruction

    def _instruction(self, instruction: str | None) -> str | None:
        """``instruction`` checked: None, or a non-empty string for a model that takes one."""
        return check_instruction(self, instruction)

    def _prepare_query(self, query: str, instruction: str | None = None) -> tuple[list[int], bool]:
        if self.prompt is not None:
            query = self.prompt.query_text(query, instruction)
        ids = self._encode([query])[0]
        if len(ids) > self._query_max:
            log.warning("query of %d tokens cut to %d (half of max_length=%d)", len(ids), self._query_max,
                        self.max_length)
            return ids[: self._query_max], True
        return ids, False

    # ---------------------------------------------------------------- public API

    def score(self, query: str, texts: Sequence[str], *, timeout_s: float | None = None,
              instruction: str | None = None) -> RerankScores:
        """Scores in input order (higher is more relevant), with per-text truncation flags and tokens run.

        ``timeout_s``: time budget; when it runs out between two forward passes the rest is dropped and
        :class:`crossrank.errors.RerankTimeout` is raised (so a caller that gave up stops costing CPU).
        ``instruction``: the task description for rerankers whose prompt takes one (:attr:`takes_instruction`;
        None: the model's default); any other reranker raises ``InputError`` for it."""
        deadline = _deadline(timeout_s)
        check_query(query)
        texts = check_texts(texts)
        q_ids, q_cut = self._prepare_query(query, self._instruction(instruction))
        if not texts:
            return RerankScores(scores=[], truncated=[])
        docs = self._encode_docs(texts)
        return self._score_ids([q_ids] * len(texts), [q_cut] * len(texts), docs, deadline)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                    instruction: str | None = None) -> RerankScores:
        """Scores for ``(query, text)`` pairs from any number of queries (each distinct query tokenised once);
        ``timeout_s`` and ``instruction`` as in :meth:`score`."""
        deadline = _deadline(timeout_s)
        instruction = self._instruction(instruction)
        pairs = list(pairs)
        if not pairs:
            return RerankScores(scores=[], truncated=[])
        queries: dict[str, tuple[list[int], bool]] = {}
        for p in pairs:
            if not isinstance(p, (tuple, list)) or len(p) != 2:
                raise InputError("score_pairs takes (query, text) pairs")
            q = p[0]
            if q not in queries:
                check_query(q)
                queries[q] = self._prepare_query(q, instruction)
        texts = check_texts([p[1] for p in pairs])
        docs = self._encode_docs(texts)
        qs = [queries[p[0]] for p in pairs]
        return self._score_ids([q for q, _ in qs], [c for _, c in qs], docs, deadline)

    def count_inputs(self, query: str, texts: Sequence[str], instruction: str | None = None) -> InputCount:
        """What :meth:`score` would run for these pairs, without running it: ``tokens`` (special tokens and every
        window of a chunked document included, equal to ``score(query, texts).tokens``) and ``windows`` (one per
        text unless ``long_documents="chunk"`` splits it). Tokenises only: no forward pass."""
        check_query(query)
        texts = check_texts(texts)
        if not texts:
            return InputCount(0, 0)
        q_ids, q_cut = self._prepare_query(query, self._instruction(instruction))
        plan = self._plan([q_ids] * len(texts), [q_cut] * len(texts), self._encode_docs(texts))
        return InputCount(_plan_tokens(plan, self.template), len(plan.windows))

    def count_tokens(self, query: str, texts: Sequence[str], instruction: str | None = None) -> int:
        """Tokens :meth:`score` would run for these pairs (``score(query, texts).tokens``), without a forward pass."""
        return self.count_inputs(query, texts, instruction).tokens

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        return rank_by_scores(list(texts), self.score(query, texts).scores, top_n)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]] | None:
        """Each text's tokens as ``(start, end)`` character spans (no special tokens), from the tokenizer's offset
        mapping; None for a tokenizer without one (not a fast tokenizer)."""
        if not getattr(self.tokenizer, "is_fast", False):
            return None
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [list(map(tuple, o)) for o in enc["offset_mapping"]]

    def pair_inputs(self, query: str, text: str, instruction: str | None = None) -> list[dict[str, list[int]]]:
        """What the model is fed for one pair: ``input_ids`` and ``token_type_ids`` per window (one unless
        ``long_documents="chunk"`` splits the text). For debugging and tests."""
        check_query(query)
        q, _ = self._prepare_query(query, self._instruction(instruction))
        d = self._encode_docs(check_texts([text]))[0]
        windows, _ = self._windows(q, d, self._avail - len(q))
        return [dict(zip(("input_ids", "token_type_ids"), self.template.build(q, w), strict=True)) for w in windows]

    def info(self) -> dict[str, Any]:
        labels = getattr(self.model.config, "id2label", None)
        return {
            "model": self.name,
            "architecture": (getattr(self.model.config, "architectures", None) or [type(self.model).__name__])[0],
            "dtype": DTYPE_NAMES.get(self._compute_dtype, str(self._compute_dtype)),
            "device": str(self.device),
            "max_length": self.max_length,
            "num_labels": self.num_labels,
            "id2label": {str(k): str(v) for k, v in labels.items()} if labels else None,
            "special_tokens": self.template.n_special,
            "activation": self.activation,
            "backend": self.backend,
            "backend_info": dict(self._backend_info or {}),
            "threads": self._num_threads or torch.get_num_threads(),
            "batch_tokens": self.batch_tokens,
            "pass_tokens": self.pass_tokens,
            "max_batch_size": self.max_batch_size,
            "long_documents": self.long_documents,
            "calibration": self.calibration.to_dict(),
            "recommended": dict(self.recommended),
            "prompt_format": None if self.prompt is None else self.prompt.name,
            "takes_instruction": self.takes_instruction,
        }

    def with_options(self, **options: Any) -> Reranker:
        """This engine with other long-document handling (``long_documents``, ``chunk_overlap``, ``max_chunks``):
        the same weights, backend and lock (no second copy of the model, no second backend set up); no options:
        this engine."""
        if not options:
            return self
        unknown = set(options) - set(_VARIANT_OPTIONS)
        if unknown:
            raise InputError(f"{self.name}: with_options takes {', '.join(_VARIANT_OPTIONS)}, not "
                             f"{', '.join(sorted(unknown))}")
        mode = options.get("long_documents", self.long_documents)
        _check_long_documents(mode, self.prompt)
        variant = copy.copy(self)
        variant.long_documents = mode
        variant.max_chunks = max(1, int(options.get("max_chunks", self.max_chunks)))
        variant.chunk_overlap = max(0, min(int(options.get("chunk_overlap", self.chunk_overlap)), self._avail // 4))
        variant.recommended = dict(self.recommended)
        return variant

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.name!r}, dtype={self.info()['dtype']}, device={self.device})"

    # ---------------------------------------------------------------- core

    def _windows(self, q: list[int], d: list[int], budget: int) -> tuple[list[list[int]], bool]:
        """The document pieces to score and whether any of the document was left out."""
        if len(d) <= budget:
            return [d], False
        if self.long_documents == "truncate":
            return [d[:budget]], True
        if self.long_documents == "focus":
            return [self._sentence_focus().window(q, d, budget)], True
        stride = max(1, budget - min(self.chunk_overlap, budget // 2))
        starts = list(range(0, len(d) - budget + 1, stride))
        if starts[-1] + budget < len(d):
            starts.append(len(d) - budget)
        dropped = len(starts) > self.max_chunks
        return [d[s : s + budget] for s in starts[: self.max_chunks]], dropped

    def _sentence_focus(self) -> SentenceFocus:
        if self._focus is None:  # built on first use: it scans the vocabulary once
            self._focus = SentenceFocus(self.tokenizer)
        return self._focus

    def _plan(self, q_ids: list[list[int]], q_cut: list[bool], docs: list[list[int]]) -> "_Plan":
        """The (query, window) sequences to run for these pairs: what :meth:`_score_ids` scores and what
        :meth:`count_inputs` counts (one function, so the two cannot disagree)."""
        plan = _Plan([], [], [])
        for i, (q, cut, d) in enumerate(zip(q_ids, q_cut, docs, strict=True)):
            windows, dropped = self._windows(q, d, self._avail - len(q))
            plan.truncated.append(cut or dropped)
            for w in windows:
                plan.windows.append((q, w))
                plan.owner.append(i)
        return plan

    def _score_ids(self, q_ids: list[list[int]], q_cut: list[bool], docs: list[list[int]],
                   deadline: float | None = None) -> RerankScores:
        plan = self._plan(q_ids, q_cut, docs)
        seqs = [self.template.build(q, w) for q, w in plan.windows]
        logits = self._forward_all(seqs, deadline)
        best = [-math.inf] * len(docs)
        for o, v in zip(plan.owner, logits, strict=True):
            if v > best[o]:
                best[o] = v
        scores = [self._activate(v) for v in best]
        return RerankScores(scores=scores, truncated=plan.truncated, tokens=_plan_tokens(plan, self.template))

    def _activate(self, logit: float) -> float:
        if self.activation == "raw":
            return float(logit)
        return self.calibration.prob(logit)

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices grouped into batches, longest first, each within the token budget once padded.

        On CPU the budget is ``min(batch_tokens, CPU_PASS_TOKENS)`` (small passes run faster there), and a batch is
        also kept under :data:`ATTENTION_BUDGET_BYTES` of attention scores (batch x heads x
        width^2 fp32, what eager and fused CPU attention materialise), so long inputs run in smaller batches and peak
        memory stays bounded (CPU throughput barely depends on batch size past a few sequences)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        width = 0  # padded length of the current batch: its first (longest) member's length
        cap = self.max_batch_size
        budget_tokens = getattr(self, "pass_tokens", self.batch_tokens)
        budget = getattr(self, "_attn_budget", 0)
        heads = getattr(self, "_heads", 12)
        for i in order:
            if cur and (width * (len(cur) + 1) > budget_tokens or len(cur) >= cap):
                batches.append(cur)
                cur = []
            if not cur:
                width = lengths[i]
                cap = self.max_batch_size
                if budget:
                    cap = max(1, min(cap, budget // max(1, heads * width * width * 4)))
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def _forward_all(self, seqs: list[tuple[list[int], list[int]]], deadline: float | None = None) -> list[float]:
        """One relevance logit per sequence (label 1 minus label 0 for 2-label models), in input order."""
        out = [0.0] * len(seqs)
        batches = self._batches([len(s[0]) for s in seqs])
        for done, batch in enumerate(batches):
            if deadline is not None and time.monotonic() > deadline:
                raise RerankTimeout(f"time budget ran out after {done} of {len(batches)} forward passes "
                                    f"({len(seqs)} sequences); the rest was not scored")
            width = max(len(seqs[i][0]) for i in batch)
            ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
            types = np.zeros((len(batch), width), dtype=np.int64) if self._use_token_types else None
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                s_ids, s_types = seqs[i]
                n = len(s_ids)
                ids[row, :n] = s_ids
                if types is not None:
                    types[row, :n] = s_types
                mask[row, :n] = 1
            with self._lock:
                logits = self._runner(ids, mask, types)
            if self.num_labels == 2:
                rel = (logits[:, 1] - logits[:, 0]).tolist()
            else:
                rel = logits[:, 0].tolist()
            for i, v in zip(batch, rel, strict=True):
                out[i] = v
        return out


@dataclass
class _Plan:
    windows: list[tuple[list[int], list[int]]]  # (query ids, document window ids), one per sequence to run
    owner: list[int]  # the pair each sequence belongs to
    truncated: list[bool]  # per pair: query cut or part of the document left out


def _plan_tokens(plan: _Plan, template: PairTemplate) -> int:
    """Tokens the sequences of ``plan`` hold once built with ``template`` (its ``build`` adds exactly
    ``n_special`` ids to each query + window)."""
    return sum(len(q) + len(w) + template.n_special for q, w in plan.windows)


def _length_limit(config: Any, tokenizer: Any, name: str, max_length: int | None, prompt: PromptFormat | None) -> int:
    """The longest pair the model has positions for (an InputError if ``max_length`` asks for more), capped at 512
    (causal LMs: ``CAUSAL_DEFAULT_MAX_LENGTH``) and at the tokenizer's own ``model_max_length``: the default
    ``max_length``."""
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    if getattr(config, "model_type", "") in _PADDING_OFFSET_POSITIONS:
        # position ids start at padding_idx + 1 (2 for RoBERTa / XLM-R), whatever the table's size
        pad = getattr(config, "pad_token_id", None)
        limit -= (int(pad) + 1) if pad is not None else 2
    if max_length and int(max_length) > limit:
        raise InputError(f"max_length={max_length} is more than {name} has positions for ({limit})")
    limit = min(limit, 512 if prompt is None else CAUSAL_DEFAULT_MAX_LENGTH)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 100_000:
        limit = min(limit, tok_max)
    return limit


def _check_long_documents(mode: str, prompt: PromptFormat | None) -> None:
    if mode not in LONG_DOCUMENT_MODES:
        raise InputError(f"long_documents must be one of {', '.join(LONG_DOCUMENT_MODES)}, not {mode!r}")
    if prompt is not None and mode == "chunk":
        # a window after the first would lose the document part's own opening ("<Document>: ")
        raise InputError("long_documents='chunk' is not supported for causal-LM rerankers; use truncate")


def _deadline(timeout_s: float | None) -> float | None:
    if timeout_s is None:
        return None
    if not timeout_s > 0:
        raise InputError(f"timeout_s must be positive, got {timeout_s}")
    return time.monotonic() + float(timeout_s)


def _clip_at_whitespace(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
    return text[:cut] if cut > limit // 2 else text
