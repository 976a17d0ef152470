"""PyramidKV: SnapKV's scores, with larger budgets in lower layers.

Cai, Zhang, Gao, Liu, Liu, Lu, Hu, Zhang, Zhang, Xu, Yue, Xiong,
"PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
Funneling", 2024. Lower layers attend broadly, upper ones narrowly, so the
heavy budget (SnapKV's, the window aside) falls linearly from the first layer
to the last: from ``2 * heavy - heavy // beta`` to ``heavy // beta`` (at least
the sinks), capped at the prompt before the window, with the same total over
the layers as SnapKV's even budget (rounded to keep it exact). Scoring is
SnapKV's; the prompt is compressed once and new tokens are all kept.
"""
from dataclasses import dataclass

from ..policy import Budget
from .snapkv import SnapKV


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    name = "pyramidkv"
    beta: int = 20

    def layer_budget(self, prompt_len: int, ratio: float, sink_len: int, layer: int, layers: int) -> Budget:
        even = self.budget(prompt_len, ratio, sink_len)
        return Budget(heavy=pyramid(even.heavy, prompt_len - self.window, sink_len, self.beta, layers)[layer],
                      recent=even.recent)


def pyramid(heavy: int, prefix: int, sink_len: int, beta: int, layers: int) -> list[int]:
    """Heavy budgets of ``layers`` layers, falling linearly, summing to ``layers * heavy``, each <= ``prefix``."""
    low = max(heavy // beta, min(sink_len, heavy))
    high = 2 * heavy - low
    if high > prefix:  # as PyramidKV: the first layer cannot keep more than the prompt holds
        high = max(prefix, heavy)
        low = 2 * heavy - high
    if layers == 1:
        return [heavy]
    exact = [high - (high - low) * i / (layers - 1) for i in range(layers)]
    budgets = [int(x) for x in exact]
    missing = layers * heavy - sum(budgets)
    # largest remainders first (lower layers on ties): the total is exactly the even one
    for i in sorted(range(layers), key=lambda i: (budgets[i] - exact[i], i))[:missing]:
        budgets[i] += 1
    return budgets


METHOD = PyramidKV
