"""H2O: heavy hitters by attention accumulated over every query.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
Large Language Models", NeurIPS 2023; as run by the VATP paper's code
(``pred.py --h2o``): every prompt query's attention is summed, each decode
step adds its own, and heavy = recent = int(ratio * prompt_len). A recent
budget of 0 keeps every token, as the paper's code does (a slicing quirk).
"""
from dataclasses import dataclass

from ..policy import Budget
from .base import Method


@dataclass(frozen=True)
class H2O(Method):
    name = "h2o"
    window = None  # every prompt query

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        n = int(ratio * prompt_len)
        return Budget(heavy=n, recent=n, keeps_all=n == 0)


METHOD = H2O
