"""TOVA: keep the tokens the newest query attends most, deciding anew at every step.

Oren, Hassid, Yarden, Adi, Schwartz, "Transformers are Multi-State RNNs",
EMNLP 2024 (Token Omission Via Attention). A token's score is the attention
the current query pays it, with no history: scores are replaced, not
accumulated, at every decode step, and at the prompt they are the last prompt
query's. No recent window: the ``2 * int(ratio * L)`` best tokens are kept
(the total of the other methods), plus the incoming one.

One difference: TOVA's paper averages the attention over all of a layer's
heads, so that the layer keeps one set of tokens; here, as for every method,
each KV head keeps its own, scored by the mean over its GQA group (the evict
backend holds other tokens in the same slot of different heads, so scores
are never mixed across heads).
"""
from dataclasses import dataclass

from ..policy import Budget
from .base import Method, Scores


@dataclass(frozen=True)
class TOVA(Method):
    name = "tova"
    scores = Scores.LATEST  # the newest query's attention only
    window = 1  # the last prompt query

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        return Budget(heavy=2 * int(ratio * prompt_len), recent=0)


METHOD = TOVA
