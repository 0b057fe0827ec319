"""A causal language model as a two-logit pair classifier: what the engine runs for LLM rerankers.

:class:`NextTokenScorer` wraps a ``*ForCausalLM`` model. Its forward pass takes the same ``input_ids`` and
``attention_mask`` as a sequence classifier's and returns ``logits`` of shape ``(batch, 2)``: the language
model's next-token logits for the "false" and the "true" answer token at each row's last real position (the
"false" column is zero when the format has no false token). The engine then reads relevance as column 1 minus
column 0, exactly as for a two-label classifier.

Only the two answer rows of the output embedding are applied, to one position per row, instead of the whole
vocabulary at every position. Rows are padded on the right: in a causal model no real token attends to the
padding that follows it, so every row computes exactly what it would alone (left padding, which generation
needs, would shift the positions of shorter rows).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn


class NextTokenScorer(nn.Module):
    """``(batch, 2)`` answer-token logits at each row's last real token (see the module docstring)."""

    def __init__(self, lm: Any, true_id: int, false_id: int | None) -> None:
        super().__init__()
        self.body = lm.base_model  # the decoder stack without the language-model head
        head = lm.get_output_embeddings()
        ids = [false_id, true_id] if false_id is not None else [true_id]
        weight = head.weight.detach()[ids].clone()
        bias = head.bias.detach()[ids].clone() if getattr(head, "bias", None) is not None else None
        if false_id is None:  # a zero "false" logit: relevance is the true token's logit alone
            weight = torch.cat([torch.zeros_like(weight), weight])
            bias = None if bias is None else torch.cat([torch.zeros_like(bias), bias])
        self.answer_weight = nn.Parameter(weight, requires_grad=False)
        self.answer_bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)  # Gemma 2
        self.config = copy.deepcopy(lm.config)
        self.config.num_labels = 2
        self.answer_ids = (false_id, true_id)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> SimpleNamespace:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.long().sum(dim=1) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = h @ self.answer_weight.to(h.dtype).T
        if self.answer_bias is not None:
            logits = logits + self.answer_bias.to(h.dtype)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return SimpleNamespace(logits=logits)
