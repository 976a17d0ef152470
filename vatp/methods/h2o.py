"""H2O: heavy hitters by attention accumulated over every query.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
Large Language Models", NeurIPS 2023; as run by the VATP paper's code
(``pred.py --h2o``): heavy = recent = int(ratio * prompt_len).
"""
from ..policy import Budget
from .base import Method


class H2O(Method):
    name = "h2o"
    query_window = None
    score_divisor = 1.0

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        n = int(ratio * prompt_len)
        return Budget(heavy=n, recent=n)
