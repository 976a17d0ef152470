"""StreamingLLM-style baseline: attention sinks plus a window of recent tokens.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks",
ICLR 2024. Not in the VATP paper's comparison (its code has it only as a
commented-out line); this project adds it as the score-free baseline. It
keeps the same total as H2O, 2 * int(ratio * L): the first ``sink_len``
tokens and the newest ones. No attention is scored, so VATP (which would
weight scores no token is ranked by) and AdaKV refuse it.
"""
from dataclasses import dataclass

from ..policy import Budget, protect_sinks
from .base import Method, Prompt, Scores


@dataclass(frozen=True)
class StreamingLLM(Method):
    name = "streaming"
    scores = Scores.NONE  # the sinks and the window are kept by position alone
    protects_sinks = True

    def prompt_scores(self, prompt: Prompt):
        scores = prompt.key.new_zeros(prompt.kv_heads, prompt.key.shape[2], dtype=prompt.score_dtype)
        return protect_sinks(scores, prompt.sink_len)

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        total = 2 * int(ratio * prompt_len)
        return Budget(heavy=sink_len, recent=total - sink_len)


METHOD = StreamingLLM
