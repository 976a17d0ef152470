"""H2O: heavy hitters by attention accumulated over every query.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
Large Language Models", NeurIPS 2023; as run by the VATP paper's code
(``pred.py --h2o``): every prompt query's attention is summed, each decode
step adds its own, and heavy = recent = int(ratio * prompt_len).
"""
from ..policy import Budget
from .base import Method


class H2O(Method):
    name = "h2o"
    query_window = None  # every prompt query

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        n = int(ratio * prompt_len)
        return Budget(heavy=n, recent=n)


METHOD = H2O()
