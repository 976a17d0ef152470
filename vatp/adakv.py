"""AdaKV's head-adaptive budgets, as an option any method can take (``VatpConfig(adakv=True)``).

Feng, Lv, Cao, Xie, Zhou, "Ada-KV: Optimizing KV Cache Eviction by Adaptive
Budget Allocation for Efficient LLM Inference", 2024. A layer's heavy budget
is not split evenly over its KV heads: the layer keeps its best-scored older
tokens across all heads together, so a head whose attention is concentrated
gives budget to one whose attention is spread. As in the original AdaKV,
each head first keeps its own best ``alpha`` share of the even split of the
heavy budget (a safeguard), and the rest goes to the best scores across heads
(kvpress's ``AdaKVPress`` counts a method's window, such as SnapKV's 32
tokens, in the share it protects; here the window is kept by every head
outside the heavy budget, and the safeguard is a share of the rest).
Only for scores that are attention, which compare across heads.
The layer's total stays the even split's; sinks and the recent window are
kept by every head, as without AdaKV. Decided once, from the prompt's scores;
a method that prunes while decoding keeps each head's budget from then on.
"""
from __future__ import annotations

import torch

from .methods.base import Method, Scores
from .policy import Limits, rank_key
from .refusals import UnsupportedError

ALPHA = 0.2  # each head's safeguard share of the even split (kvpress's alpha_safeguard)

# Why AdaKV refuses a method whose scores are not attention.
NOT_COMPARABLE = {
    Scores.SIGNED: "its scores are minus key norms, whose scale differs from head to head",
    Scores.NONE: "it keeps tokens by position and has no scores to compare",
}


def check_applies(method: Method) -> None:
    """Refuse AdaKV for a method whose scores do not compare across KV heads (not attention)."""
    if not method.scores.is_attention:
        from .methods import attention_methods

        raise UnsupportedError(f"AdaKV moves budget between KV heads by comparing their scores, and {method.name}: "
                               f"{NOT_COMPARABLE[method.scores]}; drop adakv, or use a method that scores attention "
                               f"({', '.join(attention_methods())})")


def head_budgets(scores: torch.Tensor, positions: torch.Tensor, attended: torch.Tensor, cached: torch.Tensor,
                 limits: Limits, alpha: float = ALPHA) -> torch.Tensor:
    """Each KV head's heavy budget (sinks included): (B, kv_heads, 1) int64, summing per row to kv_heads x heavy.

    scores (B, H, C), positions (B, H | 1, C), attended (B, H, C), cached (B, 1, 1): the prompt's state,
    as :func:`vatp.policy.keep_slots` takes it. A row that does not prune yet keeps the even split.
    """
    batch, heads, slots = scores.shape
    even = (limits.heavy - limits.sinks).clamp(min=0)  # (B, 1, 1) the even split of the ranked budget (a row that
    # keeps all, int(r*L) == 0, has a heavy budget of 0 below its sinks)
    safe = (even * alpha).long()
    older = attended & (positions < cached - limits.recent) & (positions >= limits.sinks)
    # Unique keys across the heads of a row: equal scores go to the older token, then to the lower head.
    ties = positions * heads + torch.arange(heads, device=scores.device)[:, None]
    key = rank_key(scores, ties).masked_fill(~older, torch.iinfo(torch.int64).min)
    rank = torch.empty_like(key).scatter_(-1, key.argsort(dim=-1, descending=True),
                                          torch.arange(slots, device=key.device).expand_as(key))
    guaranteed = older & (rank < safe)
    shared = key.masked_fill(guaranteed, torch.iinfo(torch.int64).min).view(batch, heads * slots)
    share = (heads * (even - safe)).view(batch, 1)  # what the heads share, per row
    best = shared.topk(min(int(share.max()), heads * slots), dim=-1).indices  # a wider share cannot prune yet
    won = torch.zeros_like(shared, dtype=torch.bool).scatter_(
        -1, best, torch.arange(best.shape[-1], device=best.device) < share).view(batch, heads, slots)
    adaptive = limits.sinks + (guaranteed | (won & older)).sum(dim=-1, keepdim=True)
    return torch.where(cached > limits.prune_above, adaptive, limits.heavy.expand(batch, heads, 1))
