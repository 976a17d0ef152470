"""How a keep decision is applied: masked (faithful) or evicted (memory freed).

Both receive the same boolean decision from :func:`vatp.policy.keep_mask`,
over the tokens of the sample in order; nothing else differs between them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

from .policy import Budget, kept_count


@dataclass
class LayerState:
    """Per-layer pruning state of the current sample."""

    scores: torch.Tensor | None = None  # (kv_heads, K) accumulated importance, oldest token first
    value_norms: torch.Tensor | None = None  # (kv_heads, K) value L1 norms, oldest token first
    budget: Budget | None = None
    keep: torch.Tensor | None = None  # (kv_heads, K + 1) mask backend: what the next step attends
    slots: torch.Tensor | None = None  # (kv_heads, K) evict backend: cache slot of each token
    positions: torch.Tensor | None = None  # (kv_heads, K) evict backend: absolute position of each token
    next_slot: torch.Tensor | None = None  # (kv_heads,) evict backend: where the next token goes; None: appended
    seen: int = 0  # tokens of the sample seen so far (absolute length)


class MaskBackend:
    """The paper's way: the cache keeps every token; pruned ones are masked next step."""

    name = "mask"

    def apply(self, state: LayerState, keep: torch.Tensor, cache, layer_idx: int) -> None:
        state.keep = keep

    def keep_new_token(self, state: LayerState) -> None:
        """A step that prunes nothing: the kept set grows by the new token's slot."""
        state.keep = torch.cat([state.keep, state.keep.new_ones(state.keep.shape[0], 1)], dim=1)

    def step_mask(self, state: LayerState) -> torch.Tensor | None:
        return state.keep

    def step_order(self, state: LayerState, kv_len: int) -> torch.Tensor | None:
        return None  # the cache is in token order


class SlotLayer(DynamicLayer):
    """A cache layer of fixed capacity: the next token overwrites the slot just evicted.

    ``free`` (kv_heads,) is that slot per KV head, or None to append as
    :class:`DynamicLayer` does. Once the budget is reached every decode step
    evicts one token per head, so the layer stops growing and stops copying:
    a step writes one token instead of ``torch.cat``-ing the whole cache.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.free: torch.Tensor | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        if self.free is None or key_states.shape[-2] != 1:
            self.free = None
            return super().update(key_states, value_states)
        index = self.free.view(1, -1, 1, 1).expand_as(key_states)
        self.keys.scatter_(-2, index, key_states)
        self.values.scatter_(-2, index, value_states)
        self.free = None
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Tokens held; a slot waiting to be overwritten does not count."""
        return super().get_seq_length() - (self.free is not None)


class EvictBackend:
    """Pruned tokens leave the KV cache, so it holds exactly the budget.

    After the prompt the kept tokens are gathered into a :class:`SlotLayer`,
    in order. From then on each step evicts one token per head and the next
    token is written into its slot, so slots stop being in token order:
    ``state.slots`` maps each token to its slot, and :meth:`step_order`
    hands the session the step's scores back in token order. Keys are cached
    after RoPE, so a token's position travels with it.
    """

    name = "evict"

    def apply(self, state: LayerState, keep: torch.Tensor, cache, layer_idx: int) -> None:
        kept = keep[:, :-1]  # (kv_heads, K); the incoming slot is not cached yet
        heads, k = kept.shape
        in_order = torch.arange(k, device=kept.device).expand(heads, k)
        slots = state.slots if state.slots is not None else in_order
        positions = state.positions if state.positions is not None else in_order
        state.next_slot = None
        evicted = k - kept_count(k, state.budget)  # the same for every head; known without a device sync
        if evicted == 0:
            state.slots, state.positions = slots, positions
            return
        if cache is None:
            raise RuntimeError("evict backend: no KV cache was captured for this forward; pass use_cache=True")
        layer = cache.layers[layer_idx]
        step = evicted == 1 and isinstance(layer, SlotLayer)  # a decode step: one slot per head is freed
        if step:  # the kept tokens are all but the dropped one: no nonzero(), so no sync
            dropped = (~kept).int().argmax(1, keepdim=True)  # (kv_heads, 1)
            order = torch.arange(k - 1, device=kept.device)
            index = order + (order >= dropped)  # (kv_heads, K - 1), oldest first
        else:
            index = kept.nonzero(as_tuple=True)[1].view(heads, -1)  # (kv_heads, n_keep), oldest first
        state.scores = state.scores.gather(1, index)
        state.value_norms = state.value_norms.gather(1, index)
        state.slots = slots.gather(1, index)
        state.positions = positions.gather(1, index)
        if step:
            state.next_slot = layer.free = slots.gather(1, dropped).squeeze(1)
            return
        # The prompt (or a first cut on a plain layer): compact into a SlotLayer, in token order.
        gather = state.slots[None, :, :, None].expand(layer.keys.shape[0], -1, -1, layer.keys.shape[-1])
        cache.layers[layer_idx] = SlotLayer(layer.keys.gather(2, gather), layer.values.gather(2, gather))
        state.slots = torch.arange(index.shape[1], device=kept.device).expand(heads, -1)

    def keep_new_token(self, state: LayerState) -> None:
        """A step that prunes nothing: the next token is appended (no slot was freed)."""
        state.next_slot = None

    def step_mask(self, state: LayerState) -> torch.Tensor | None:
        return None

    def step_order(self, state: LayerState, kv_len: int) -> torch.Tensor:
        """(kv_heads, kv_len) the cache slot of each token this step attended, oldest first.

        Also records it as ``state.slots``, the order :meth:`apply` decides in,
        and the new token's position (``state.seen``) in ``state.positions``.
        """
        heads = state.slots.shape[0]
        new = (state.next_slot if state.next_slot is not None
               else torch.full((heads,), kv_len - 1, device=state.slots.device))
        state.slots = torch.cat([state.slots, new[:, None]], dim=1)
        state.positions = torch.cat([state.positions, torch.full_like(new[:, None], state.seen)], dim=1)
        return state.slots


BACKENDS = {b.name: b for b in (MaskBackend, EvictBackend)}
