"""StreamingLLM-style baseline: attention sinks plus a window of recent tokens.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks",
ICLR 2024. Not in the VATP paper's comparison (its code has it only as a
commented-out line); this project adds it as the score-free baseline. It
keeps the same total as H2O, 2 * int(ratio * L): the first ``sink_len``
tokens and the newest ones. No attention is scored.
"""
from ..policy import Budget, protect_sinks
from .base import Method


class StreamingLLM(Method):
    name = "streaming"
    query_window = 0  # no prompt query is scored: only the sinks rank
    protects_sinks = True

    def prompt_scores(self, sums, kv_heads, norms, sink_len):
        return protect_sinks(super().prompt_scores(sums, kv_heads, norms, sink_len), sink_len)

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        total = 2 * int(ratio * prompt_len)
        return Budget(heavy=sink_len, recent=total - sink_len)


METHOD = StreamingLLM()
