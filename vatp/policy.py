"""The keep decision as small pure functions, over cache slots.

Everything that decides *which* cached tokens survive lives here, once, and
works on a whole batch at once. Decisions are made in cache coordinates: a
layer's state is a (B, kv_heads, C) tensor per quantity, one entry per cache
slot, and each slot carries the absolute position of the token it holds (its
row's own count: padding is not a token). The mask and evict backends then
differ only in where the next token is written (``vatp/backends/``).

Paper: Guo, Kamigaito, Watanabe. "Attention Score is not All You Need for
Token Importance Indicator in KV Cache Reduction: Value Also Matters",
EMNLP 2024, Sec. 3 (value-aware token pruning).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NO_POSITION = -1  # a slot that holds no token of its row (left padding, an unused slot)


@dataclass(frozen=True)
class Budget:
    """Cache budget of one row, fixed from its prompt length at prefill.

    A decision over K cached tokens keeps the ``recent`` newest and the
    ``heavy`` best-scored older ones when ``K > heavy + recent``; the token fed
    in next is always attended on top, so a decode step attends
    ``heavy + recent + 1`` tokens. ``keeps_all``: the paper's code keeps every
    token when its recent budget is 0 (a slicing quirk), as H2O and
    Scissorhands reproduce; other methods prune with ``recent == 0``.
    """

    heavy: int  # tokens kept by score among the older ones
    recent: int  # newest cached tokens always kept
    keeps_all: bool = False

    @property
    def total(self) -> int:
        return self.heavy + self.recent


@dataclass(frozen=True)
class Limits:
    """A layer's budgets as tensors, one per row (and KV head), for a batched decision.

    heavy (B, kv_heads | 1, 1), recent (B, 1, 1) and ``prune_above`` (B, kv_heads | 1, 1):
    a row prunes once it holds more tokens than this (its total, or "never" where
    it keeps all). ``sinks``: the first tokens of every row that are always kept
    (VATP, StreamingLLM), out of the heavy budget; 0 for none. ``ranked``
    (B, kv_heads | 1, heavy_max) bool: which of the ``heavy_max`` best other older
    tokens each row keeps (its first ``heavy - sinks``).
    """

    heavy: torch.Tensor
    recent: torch.Tensor
    prune_above: torch.Tensor
    sinks: int
    ranked: torch.Tensor

    @classmethod
    def of(cls, budgets: list[Budget], device, sinks: int = 0, heavy: torch.Tensor | None = None) -> "Limits":
        """From each row's budget; ``heavy`` (B, kv_heads, 1) overrides the rows' heavy budgets per head."""
        recent = torch.tensor([b.recent for b in budgets], device=device).view(-1, 1, 1)
        if heavy is None:  # the widest ranked budget is known on the host
            ranked_max = max([b.heavy - sinks for b in budgets] + [0])
            heavy = torch.tensor([b.heavy for b in budgets], device=device).view(-1, 1, 1)
        else:  # per-head budgets (AdaKV): one host sync
            ranked_max = max(int(heavy.max()) - sinks, 0) if heavy.numel() else 0
        never = torch.iinfo(torch.int64).max
        keeps_all = torch.tensor([b.keeps_all for b in budgets], device=device).view(-1, 1, 1)
        prune_above = torch.where(keeps_all, never, heavy + recent)
        ranked = torch.arange(ranked_max, device=device) < heavy - sinks
        return cls(heavy=heavy, recent=recent, prune_above=prune_above, sinks=sinks, ranked=ranked)


def value_l1_norm(values: torch.Tensor) -> torch.Tensor:
    """L1 norm of each value vector: (..., n, head_dim) -> (..., n).

    Values carry no RoPE, so this is the norm of the ``v_proj`` output.
    """
    return torch.norm(values, p=1, dim=-1)


def group_to_kv_heads(scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Mean of per-query-head scores over each GQA group: (..., heads, n) -> (..., kv_heads, n).

    Query heads ``g*k .. g*k+g-1`` share KV head ``k`` (transformers' ``repeat_kv``
    layout). With MHA (g == 1) this is the identity, bit for bit, so the paper's
    per-head rule is recovered exactly. The mean (not the sum) keeps float16
    scores in the same range as MHA.
    """
    heads, n = scores.shape[-2:]
    group = heads // num_kv_heads
    if group == 1:
        return scores
    return scores.view(*scores.shape[:-2], num_kv_heads, group, n).mean(dim=-2)


def protect_sinks(scores: torch.Tensor, sink_len: int) -> torch.Tensor:
    """Give the first ``sink_len`` tokens the dtype's largest finite score: (kv_heads, n), in place.

    Done once, at prefill, on a row's own tokens; later steps add to it (in
    float16 it may overflow to inf and stays on top).
    """
    if sink_len > 0:
        scores[..., :sink_len] = torch.finfo(scores.dtype).max
    return scores


def accumulate(scores: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A decode step's attention added to the running scores: (B, kv_heads, C) each.

    The incoming token's slot holds 0 (it has no history); pruned and unused
    slots hold -inf and keep it.
    """
    return scores + step


def rank_key(scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """int64 keys that order slots as their scores do, equal scores to the older token.

    scores (B, H, C) of any float dtype up to 32 bits, positions (B, H | 1, C) -> (B, H, C).
    The float's bits, made to sort as integers (negative floats have their other
    bits flipped), go in the high 32 bits; the position, negated, breaks ties.
    So every row decides the same way alone or in any batch, on any device:
    ``torch.topk``'s own tie-breaking is left unspecified.
    """
    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0: -0.0 becomes 0.0, its equal
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (bits.long() << 32) - positions


def first_stage(scores: torch.Tensor, budget: Budget, share: float) -> torch.Tensor:
    """The tokens a two-stage decision keeps by ``scores`` alone (CriticalKV's first stage): the best
    ``int(share * budget.total) - budget.recent`` of a prompt's tokens before its recent window, equal scores to
    the older token. scores (kv_heads, L) -> (kv_heads, k) int64 positions."""
    prefix = max(scores.shape[-1] - budget.recent, 0)
    count = min(max(int(share * budget.total) - budget.recent, 0), prefix)
    positions = torch.arange(prefix, device=scores.device)
    return rank_key(scores[..., :prefix], positions).topk(count, dim=-1).indices


def keep_slots(scores: torch.Tensor, positions: torch.Tensor, attended: torch.Tensor, cached: torch.Tensor,
               limits: Limits) -> torch.Tensor:
    """Which slots the next step attends, the incoming token's aside: (B, H, C) bool.

    scores (B, H, C); positions (B, H | 1, C); attended (B, H, C) bool, the
    slots the step that produced ``scores`` attended (never anything else:
    a pruned token never returns); cached (B, 1, 1) int64, K, the tokens each
    row has seen. A row with ``K > heavy + recent`` keeps its ``recent``
    newest tokens (positions >= K - recent), its sinks (positions < sinks) and
    the ``heavy - sinks`` best scores among its other attended ones, equal
    scores to the older token (:func:`rank_key`); other rows keep everything
    attended.

    For the paper's methods this is its code's rule: the kept set has
    ``heavy + recent`` cached tokens plus the incoming one (its code meant
    ``recent - 1`` and keeps one more through a write via a view).
    """
    # A row that does not prune keeps every attended slot: its recent window reaches back to every position.
    recent_from = torch.where(cached > limits.prune_above, cached - limits.recent, NO_POSITION)  # (B, 1, 1)
    recent = positions >= recent_from
    if limits.sinks:  # kept by position (a pruning row's sinks are all older than its recent window)
        recent = recent | (positions < limits.sinks)
    older = attended > recent  # attended and neither recent nor a sink
    ranked = torch.where(older, rank_key(scores, positions), torch.iinfo(torch.int64).min)
    # A heavy budget wider than the slots belongs to a row that cannot prune yet.
    chosen = limits.ranked[..., :scores.shape[-1]]
    best = ranked.topk(chosen.shape[-1], dim=-1).indices  # (B, H, heavy_max), best first
    heavy = torch.zeros_like(attended).scatter_(-1, best, chosen.expand_as(best))
    return attended & (recent | heavy)


def step_victim(scores: torch.Tensor, positions: torch.Tensor, attended: torch.Tensor, cached: torch.Tensor,
                limits: Limits) -> tuple[torch.Tensor, torch.Tensor]:
    """After a decode step, the one slot per row and KV head that leaves: :func:`keep_slots`'s decision in O(C).

    Same arguments; returns ``victim`` (B, H, 1) int64, a slot, and ``leaves`` (B, H | 1, 1) bool, whether it
    leaves (the rows that prune; the others keep every attended slot, and their ``victim`` means nothing).
    After the prompt's decision a pruning row attends its ``heavy + recent`` kept tokens plus the new one, so
    exactly one of its older (neither recent nor sink) attended slots is past the heavy budget: the lowest
    score, equal scores to the *newer* token (the older one wins the place, as in :func:`rank_key`).
    """
    leaves = cached > limits.prune_above
    protected = positions >= cached - limits.recent
    if limits.sinks:
        protected = protected | (positions < limits.sinks)
    older = attended > protected  # attended and neither recent nor a sink
    lowest = torch.where(older, scores, float("inf")).amin(dim=-1, keepdim=True)  # (B, H, 1)
    # Among the slots at the lowest score the newest leaves: the largest position.
    victim = torch.where(older & (scores == lowest), positions, NO_POSITION).argmax(dim=-1, keepdim=True)
    return victim, leaves


def leaving(attended: torch.Tensor, victim: torch.Tensor, leaves: torch.Tensor) -> torch.Tensor:
    """(B, H, C) bool: the slot that leaves in each row and KV head that prunes, from :func:`step_victim`."""
    return torch.zeros_like(attended).scatter_(-1, victim, leaves.expand_as(victim))


def drop_pruned(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Pruned slots' scores become -inf: they are masked from now on and never ranked again. (B, H, C) each."""
    return torch.where(keep, scores, float("-inf"))
