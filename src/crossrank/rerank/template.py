"""The pair template: how a tokenizer joins a query and a document, read from the tokenizer itself."""

from __future__ import annotations

from typing import Any

from crossrank.rerank.prompts import PromptFormat


class PairTemplate:
    """How the tokenizer joins a query and a document: ``prefix A mid B suffix`` with token types.

    Read from the tokenizer's own pair-building (its post-processor, or ``build_inputs_with_special_tokens`` +
    ``create_token_type_ids_from_sequences`` for Python tokenizers) and then checked against ``tokenizer(q, d)``.
    """

    def __init__(self, prefix, mid, suffix, prefix_t, mid_t, suffix_t, a_type: int, b_type: int):
        self.prefix, self.mid, self.suffix = list(prefix), list(mid), list(suffix)
        self.prefix_t, self.mid_t, self.suffix_t = list(prefix_t), list(mid_t), list(suffix_t)
        self.a_type, self.b_type = a_type, b_type
        self.n_special = len(self.prefix) + len(self.mid) + len(self.suffix)

    def build(self, q: list[int], d: list[int]) -> tuple[list[int], list[int]]:
        ids = self.prefix + q + self.mid + d + self.suffix
        types = self.prefix_t + [self.a_type] * len(q) + self.mid_t + [self.b_type] * len(d) + self.suffix_t
        return ids, types

    @classmethod
    def from_fast(cls, backend: Any) -> "PairTemplate":
        enc = backend.encode("query words", "document words", add_special_tokens=True)
        seq = enc.sequence_ids
        ids, types = enc.ids, enc.type_ids
        parts: dict[str, list[int]] = {"prefix": [], "mid": [], "suffix": []}
        parts_t: dict[str, list[int]] = {"prefix": [], "mid": [], "suffix": []}
        a_types, b_types = set(), set()
        state = "prefix"
        for s, i, t in zip(seq, ids, types, strict=True):
            if s == 0:
                if state == "prefix":
                    state = "a"
                elif state != "a":
                    raise ValueError("query tokens are not contiguous")
                a_types.add(t)
            elif s == 1:
                if state in ("a", "mid"):
                    state = "b"
                elif state != "b":
                    raise ValueError("document tokens are not contiguous")
                b_types.add(t)
            else:
                key = {"prefix": "prefix", "a": "mid", "mid": "mid", "b": "suffix", "suffix": "suffix"}[state]
                state = {"a": "mid", "b": "suffix"}.get(state, state)
                parts[key].append(i)
                parts_t[key].append(t)
        if len(a_types) != 1 or len(b_types) != 1:
            raise ValueError("token types vary inside a sequence")
        return cls(
            parts["prefix"], parts["mid"], parts["suffix"], parts_t["prefix"], parts_t["mid"], parts_t["suffix"],
            a_types.pop(), b_types.pop(),
        )

    @classmethod
    def from_prompt(cls, prompt: PromptFormat, tokenizer: Any, encode) -> "PairTemplate":
        """A causal-LM reranker's fixed pieces (:mod:`crossrank.rerank.prompts`), each tokenised on its own."""
        prefix = [int(tokenizer.bos_token_id)] if prompt.bos and tokenizer.bos_token_id is not None else []
        if prompt.bos and not prefix:
            raise ValueError(f"prompt format {prompt.name} starts with a BOS token, but the tokenizer has none")
        pieces = [[i for t in prompt.pieces(part) if t for i in encode([t])[0]]
                  for part in (prompt.prefix, prompt.separator, prompt.suffix)]
        prefix += pieces[0]
        return cls(prefix, pieces[1], pieces[2], [0] * len(prefix), [0] * len(pieces[1]), [0] * len(pieces[2]), 0, 0)

    @classmethod
    def from_python(cls, tokenizer: Any) -> "PairTemplate":
        a, b = -1001, -1002  # sentinels that no vocabulary uses
        ids = tokenizer.build_inputs_with_special_tokens([a], [b])
        types = tokenizer.create_token_type_ids_from_sequences([a], [b])
        ia, ib = ids.index(a), ids.index(b)
        return cls(
            ids[:ia], ids[ia + 1 : ib], ids[ib + 1 :], types[:ia], types[ia + 1 : ib], types[ib + 1 :],
            types[ia], types[ib],
        )
