"""Scissorhands, as the VATP paper's code runs it (``pred.py`` without ``--h2o``).

Liu et al., "Scissorhands: Exploiting the Persistence of Importance Hypothesis
for LLM KV Cache Compression at Test Time", NeurIPS 2023. The paper's code
scores a key by the attention of the last 400 prompt queries divided by 400
(even when the prompt is shorter), keeps 10 recent tokens, and gives the
rest of a 2 * int(ratio * L) budget to heavy hitters. Decode steps add their
attention, as H2O's do.
"""
from ..policy import Budget
from .base import Method

WINDOW = 400
RECENT = 10


class Scissorhands(Method):
    name = "scissorhands"
    query_window = WINDOW

    def prompt_scores(self, sums, kv_heads, norms, sink_len):
        return super().prompt_scores(sums, kv_heads, norms, sink_len) / float(WINDOW)

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        return Budget(heavy=int(ratio * prompt_len) * 2 - RECENT, recent=RECENT)


METHOD = Scissorhands()
