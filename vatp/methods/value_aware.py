"""VATP, the paper's contribution, as a modifier that any method whose scores are attention can take.

Guo, Kamigaito, Watanabe, "Attention Score is not All You Need for Token
Importance Indicator in KV Cache Reduction: Value Also Matters", EMNLP 2024,
Sec. 3: a token's importance is its method's attention score times the L1
norm of its value vector, at prefill and at every decode step, and the first
``sink_len`` tokens are always kept (attention sinks draw large attention
but carry small values, so the product would drop them).

The field's other value weightings are options, the paper's by default:

* ``value_norm``: ``"l1"`` (the paper's), ``"l2"`` (kvpress's ExpectedAttention), or ``"wo_l1"``, the value
  projected through ``o_proj`` (CriticalKV's, ``vatp/value_terms.py``);
* ``epsilon`` >= 0: the score is ``(s + epsilon) * norm``, so that a token whose attention is near zero keeps
  its value's say (kvpress, CriticalKV); at a decode step a new token enters with ``epsilon * norm``, and each
  step adds its attention times the norm, so an accumulated score stays ``(sum of attention + epsilon) * norm``;
* ``two_stage`` in [0, 1): the share of the budget kept by the method's score alone before the product ranks
  the rest (CriticalKV's first stage, :func:`vatp.policy.first_stage`; the recent window counts in it). Decided
  at the prompt; those tokens keep the top score afterwards.

CriticalKV on SnapKV is SnapKV with ``value_norm="wo_l1"``, ``epsilon`` = 32e-4 (its 1e-4 on the window's mean
attention, SnapKV's score being the sum over the window's 32 queries), ``two_stage`` 0.5 and no sinks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..names import VALUE_NORMS, check_choice, method_label, value_options
from ..policy import Budget, first_stage, protect_sinks
from ..refusals import UnsupportedError
from ..value_terms import output_weight, value_norms
from .base import Method, Prompt, Scores

# Why VATP refuses a method whose scores are not attention.
NOT_WEIGHTED = {
    Scores.SIGNED: "its scores are not attention but signed (KNorm's are minus key norms), so multiplying them by "
                   "||v||_1 would rank the tokens with larger values *lower*, the opposite of VATP",
    Scores.NONE: "it ranks no token by score (its sinks and recent window are kept by position), so the value "
                 "weighting would change nothing; its sinks are sink_len already",
}


@dataclass(frozen=True)
class ValueAware(Method):
    """``inner``'s scores weighted by its tokens' value terms, with the sinks protected; ``inner``'s budget.

    Only for attention scores (:attr:`Scores.is_attention`): there, more value means more importance.
    """

    inner: Method
    value_norm: str = "l1"
    epsilon: float = 0.0
    two_stage: float = 0.0
    protects_sinks = True
    uses_values = True

    def __post_init__(self):
        if not self.inner.scores.is_attention:
            from . import attention_methods

            raise UnsupportedError(f"VATP (apval) weights attention scores by value norms, and {self.inner.name}: "
                                   f"{NOT_WEIGHTED[self.inner.scores]}; drop apval, or use a method that scores "
                                   f"attention ({', '.join(attention_methods())})")
        check_choice("value_norm", self.value_norm, VALUE_NORMS)
        if not isinstance(self.epsilon, (int, float)) or isinstance(self.epsilon, bool) or self.epsilon < 0:
            raise ValueError(f"epsilon must be a number >= 0, got {self.epsilon!r}")
        share = self.two_stage
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share < 1:
            raise ValueError(f"two_stage must be a share of the budget in [0, 1), got {self.two_stage!r}")
        for setting in ("name", "scores", "window"):
            object.__setattr__(self, setting, getattr(self.inner, setting))

    @property
    def label(self) -> str:
        return method_label(self.name, apval=True) + value_options(self.value_norm, self.epsilon, self.two_stage)

    def token_norms(self, prompt: Prompt) -> torch.Tensor:
        """(kv_heads, L) the value term of each prompt token, in ``prompt.score_dtype``."""
        values = prompt.value[0]
        return value_norms(values.to(prompt.score_dtype), self.value_norm,
                           self.norm_weight(prompt.module, values.shape[0], values.shape[2])).to(prompt.score_dtype)

    def norm_weight(self, module, kv_heads: int, value_dim: int) -> torch.Tensor | None:
        """What the value term reads of the layer besides the values: ``o_proj``'s slices for ``wo_l1``, else None."""
        return output_weight(module, kv_heads, value_dim) if self.value_norm == "wo_l1" else None

    def new_norms(self, values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """values (B, kv_heads, 1, dv) of a decode step's token -> its value terms (B, kv_heads, 1)."""
        return value_norms(values, self.value_norm, weight)

    def entry_scores(self, norms: torch.Tensor) -> torch.Tensor | None:
        """The score a decode step's new token enters with, (B, kv_heads, 1): ``epsilon * norm`` (None: 0)."""
        return self.epsilon * norms if self.epsilon else None

    def prompt_scores(self, prompt: Prompt):
        inner = self.inner.prompt_scores(prompt)
        scores = (inner + self.epsilon if self.epsilon else inner) * self.token_norms(prompt)
        if self.two_stage:
            scores.scatter_(-1, first_stage(inner, prompt.budget, self.two_stage), torch.finfo(scores.dtype).max)
        return protect_sinks(scores, prompt.sink_len)

    def step_scores(self, scores, step, norms):
        return self.inner.step_scores(scores, None if step is None else step * norms, norms)

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        return self.inner.budget(prompt_len, ratio, sink_len)

    def layer_budget(self, prompt_len: int, ratio: float, sink_len: int, layer: int, layers: int) -> Budget:
        return self.inner.layer_budget(prompt_len, ratio, sink_len, layer, layers)
