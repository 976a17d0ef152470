"""The VATP keep policy as small pure functions.

Everything that decides *which* cached tokens survive lives here, once. The
mask backend and the eviction backend (``vatp/backends.py``) only differ in
how they apply the boolean decision returned by :func:`keep_mask`.

Paper: Guo, Kamigaito, Watanabe. "Attention Score is not All You Need for
Token Importance Indicator in KV Cache Reduction: Value Also Matters",
EMNLP 2024, Sec. 3 (value-aware token pruning).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Budget:
    """Cache budget of one sample, fixed from the prompt length at prefill."""

    heavy: int  # tokens kept by score among the older ones
    recent: int  # newest cached tokens always kept

    @property
    def total(self) -> int:
        return self.heavy + self.recent


def value_l1_norm(values: torch.Tensor) -> torch.Tensor:
    """L1 norm of each value vector: (kv_heads, n, head_dim) -> (kv_heads, n).

    Values carry no RoPE, so this is the norm of the ``v_proj`` output.
    """
    return torch.norm(values, p=1, dim=-1)


def group_to_kv_heads(scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Mean of per-query-head scores over each GQA group.

    (heads, n) -> (kv_heads, n). Query heads ``g*k .. g*k+g-1`` share KV head
    ``k`` (transformers' ``repeat_kv`` layout). With MHA (g == 1) this is the
    identity, bit for bit, so the paper's per-head rule is recovered exactly.
    The mean (not the sum) keeps fp16 scores in the same range as MHA.
    """
    heads, n = scores.shape
    group = heads // num_kv_heads
    if group == 1:
        return scores
    return scores.view(num_kv_heads, group, n).mean(dim=1)


def protect_sinks(scores: torch.Tensor, sink_len: int) -> torch.Tensor:
    """Give the first ``sink_len`` tokens the dtype's largest finite score.

    (kv_heads, n) -> (kv_heads, n), in place. Done once, at prefill; later
    steps add to it (in fp16 it may overflow to inf and stays on top).
    """
    if sink_len > 0:
        scores[:, :sink_len] = torch.finfo(scores.dtype).max
    return scores


def accumulate(previous: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Add a decode step's scores to the running ones.

    previous (kv_heads, K), step (kv_heads, K+1) -> (kv_heads, K+1). The last
    column is the new token, which has no history.
    """
    step[:, :-1] += previous
    return step


def kept_count(k: int, budget: Budget) -> int:
    """How many of ``k`` cached tokens :func:`keep_mask` keeps, the incoming slot aside."""
    return k if k <= budget.total or budget.recent == 0 else budget.total


def keep_mask(scores: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Which tokens the next forward attends: (kv_heads, K) -> (kv_heads, K+1) bool.

    Column ``K`` is the slot of the token fed in next; it is always kept.
    If ``K > budget.total`` the kept set is the ``budget.heavy`` best scores
    among positions ``[0, K - recent)`` plus the ``recent`` newest cached
    tokens ``[K - recent, K)`` plus the incoming slot: ``total + 1`` entries.
    This reproduces the paper's code exactly, including its quirks: the token
    at ``K - recent`` is kept although it sits outside its ``[:-recent]``
    slice (a write through a view), and ``recent == 0`` keeps everything.
    Ties among scores are broken as ``torch.topk`` breaks them.
    """
    heads, k = scores.shape
    keep = torch.ones(heads, k + 1, dtype=torch.bool, device=scores.device)
    if kept_count(k, budget) == k:
        return keep
    older = k - budget.recent
    keep[:, :older] = False
    if budget.heavy > 0:
        top = scores[:, :older].topk(budget.heavy, dim=-1).indices
        keep.scatter_(-1, top, True)
    return keep


def drop_pruned(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero the scores of pruned tokens: they are masked from now on and never return.

    scores (kv_heads, K), keep (kv_heads, K+1) -> (kv_heads, K).
    """
    return scores.masked_fill(~keep[:, :-1], 0)
