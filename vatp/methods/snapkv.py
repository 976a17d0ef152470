"""SnapKV: the prompt's last queries vote for the keys worth keeping, once, after the prefill.

Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation",
NeurIPS 2024. A key's score is the attention it receives from the last
``window`` (32) prompt queries, max-pooled over its ``kernel`` (7)
neighbouring keys so that the kept tokens come in clusters. The cache keeps
the best scores of the prompt before the window plus the window itself,
``2 * int(ratio * L)`` tokens in all (the budget of the other methods; the
window counts in it, as in SnapKV's ``max_capacity_prompt``). Nothing is
pruned while decoding: new tokens are all kept, as in SnapKV's paper.

Pooling is per query head, before the mean over a GQA group. The window's
own scores are never ranked (it is always kept), so pooling stops at its
edge.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from ..policy import Budget, group_to_kv_heads
from .base import Method, Prompt, Scores


@dataclass(frozen=True)
class SnapKV(Method):
    name = "snapkv"
    scores = Scores.PROMPT
    window = 32
    kernel: int = 7

    def prompt_scores(self, prompt: Prompt):
        sums = prompt.attention
        prefix = sums.shape[1] - self.window  # keys before the window: the ones ranked
        if prefix > 0:
            sums = sums.clone()
            sums[:, :prefix] = pool(sums[:, :prefix], self.kernel)
        return group_to_kv_heads(sums, prompt.kv_heads)

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        return Budget(heavy=2 * int(ratio * prompt_len) - self.window, recent=self.window)


METHOD = SnapKV


def pool(scores, kernel: int):
    """Max over each key's ``kernel`` neighbours, ``kernel // 2`` on each side: (heads, n) -> (heads, n)."""
    return F.max_pool1d(scores[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
