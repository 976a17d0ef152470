"""Scissorhands, as the VATP paper's code runs it (``pred.py`` without ``--h2o``).

Liu et al., "Scissorhands: Exploiting the Persistence of Importance Hypothesis
for LLM KV Cache Compression at Test Time", NeurIPS 2023. The paper's code
scores a key by the attention of the last 400 prompt queries divided by 400
(even when the prompt is shorter), keeps 10 recent tokens, and gives the
rest of a 2 * int(ratio * L) budget to heavy hitters. Decode steps add their
attention, as H2O's do.
"""
from dataclasses import dataclass

from ..policy import Budget, group_to_kv_heads
from .base import Method, Prompt


@dataclass(frozen=True)
class Scissorhands(Method):
    name = "scissorhands"
    window = 400
    recent: int = 10

    def prompt_scores(self, prompt: Prompt):
        return group_to_kv_heads(prompt.attention, prompt.kv_heads) / float(self.window)

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        return Budget(heavy=int(ratio * prompt_len) * 2 - self.recent, recent=self.recent,
                      keeps_all=self.recent == 0)


METHOD = Scissorhands
