"""VATP, the paper's contribution, as a modifier that any method can take.

Guo, Kamigaito, Watanabe, "Attention Score is not All You Need for Token
Importance Indicator in KV Cache Reduction: Value Also Matters", EMNLP 2024,
Sec. 3: a token's importance is its method's attention score times the L1
norm of its value vector, at prefill and at every decode step, and the first
``sink_len`` tokens are always kept (attention sinks draw large attention
but carry small values, so the product would drop them).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..names import method_label
from ..policy import Budget, protect_sinks
from ..refusals import UnsupportedError
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
    """``inner``'s scores weighted by value L1 norms, with the sinks protected; ``inner``'s budget.

    Only for attention scores (:attr:`Scores.is_attention`): there, more value means more importance.
    """

    inner: Method
    protects_sinks = True
    uses_values = True

    def __post_init__(self):
        if not self.inner.scores.is_attention:
            from . import attention_methods

            raise UnsupportedError(f"VATP (apval) weights attention scores by value norms, and {self.inner.name}: "
                                   f"{NOT_WEIGHTED[self.inner.scores]}; drop apval, or use a method that scores "
                                   f"attention ({', '.join(attention_methods())})")
        for setting in ("name", "scores", "window"):
            object.__setattr__(self, setting, getattr(self.inner, setting))

    @property
    def label(self) -> str:
        return method_label(self.name, apval=True)

    def prompt_scores(self, prompt: Prompt):
        return protect_sinks(self.inner.prompt_scores(prompt) * prompt.value_norms, prompt.sink_len)

    def step_scores(self, scores, step, norms):
        return self.inner.step_scores(scores, None if step is None else step * norms, norms)

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        return self.inner.budget(prompt_len, ratio, sink_len)

    def layer_budget(self, prompt_len: int, ratio: float, sink_len: int, layer: int, layers: int) -> Budget:
        return self.inner.layer_budget(prompt_len, ratio, sink_len, layer, layers)
