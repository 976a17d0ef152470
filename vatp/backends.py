"""How a keep decision is applied: masked (faithful) or evicted (memory freed).

Both receive the same boolean decision from :func:`vatp.policy.keep_mask`;
nothing else differs between them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .policy import Budget


@dataclass
class LayerState:
    """Per-layer pruning state of the current sample."""

    scores: torch.Tensor | None = None  # (kv_heads, kv_len) accumulated importance
    value_norms: torch.Tensor | None = None  # (kv_heads, kv_len) value L1 norms
    budget: Budget | None = None
    keep: torch.Tensor | None = None  # (kv_heads, kv_len + 1) mask backend: what the next step attends
    seen: int = 0  # tokens of the sample seen so far (absolute length)


class MaskBackend:
    """The paper's way: the cache keeps every token; pruned ones are masked next step."""

    name = "mask"

    def apply(self, state: LayerState, keep: torch.Tensor, cache_layer) -> None:
        state.keep = keep

    def step_mask(self, state: LayerState) -> torch.Tensor | None:
        return state.keep


class EvictBackend:
    """Pruned tokens are removed from the KV cache, so it holds exactly the budget.

    Keys are cached after RoPE, so the kept ones keep their positions; the
    order of kept tokens is preserved. Every KV head keeps the same number of
    tokens (heavy + recent), so the compaction is a gather.
    """

    name = "evict"

    def apply(self, state: LayerState, keep: torch.Tensor, cache_layer) -> None:
        state.keep = None
        kept = keep[:, :-1]  # (kv_heads, K); the incoming slot is not cached yet
        if bool(kept.all()):
            return
        if cache_layer is None:
            raise RuntimeError("evict backend: no KV cache was captured for this forward; pass use_cache=True")
        index = kept.nonzero(as_tuple=True)[1].view(kept.shape[0], -1)  # (kv_heads, n_keep), ascending
        state.scores = state.scores.gather(1, index)
        state.value_norms = state.value_norms.gather(1, index)
        batch, _, _, head_dim = cache_layer.keys.shape
        index = index[None, :, :, None].expand(batch, -1, -1, head_dim)
        cache_layer.keys = cache_layer.keys.gather(2, index)
        cache_layer.values = cache_layer.values.gather(2, index)

    def step_mask(self, state: LayerState) -> torch.Tensor | None:
        return None


BACKENDS = {b.name: b for b in (MaskBackend, EvictBackend)}
