"""How a keep decision is applied: masked (faithful) or evicted (memory freed).

Both receive the same boolean decision from :func:`vatp.policy.keep_mask`,
over the tokens of the sample in order; nothing else differs between them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .policy import Budget, kept_count
from .support import UnsupportedError


@dataclass
class LayerState:
    """Per-layer pruning state of one sample (one row of a batch). Token indices count the row's own
    tokens, oldest first; its padding is not among them."""

    scores: torch.Tensor | None = None  # (kv_heads, K) accumulated importance
    value_norms: torch.Tensor | None = None  # (kv_heads, K) value L1 norms
    budget: Budget | None = None
    keep: torch.Tensor | None = None  # (kv_heads, K + 1) mask backend: what the next step attends
    slots: torch.Tensor | None = None  # (kv_heads, K) evict backend: cache slot of each token
    positions: torch.Tensor | None = None  # (kv_heads, K) evict backend: absolute position of each token
    freed: torch.Tensor | None = None  # (kv_heads,) evict backend: the slot the last decision emptied, if any
    next_slot: torch.Tensor | None = None  # (kv_heads,) evict backend: where the next token goes
    used: int = 0  # evict backend: slots [0, used) of the row's cache hold its tokens (and the next one)
    seen: int = 0  # tokens of the sample seen so far (absolute length)


class MaskBackend:
    """The paper's way: the cache keeps every token; pruned ones are masked next step."""

    name = "mask"

    def apply(self, state: LayerState, keep: torch.Tensor, cache, layer_idx: int) -> None:
        state.keep = keep

    def keep_new_token(self, state: LayerState) -> None:
        """A step that prunes nothing: the kept set grows by the new token's slot."""
        state.keep = torch.cat([state.keep, state.keep.new_ones(state.keep.shape[0], 1)], dim=1)

    def prepare_next(self, states: list[LayerState], cache, layer_idx: int, pads: list[int]) -> None:
        """Nothing to do: the cache holds every token in order."""

    def step_mask(self, states: list[LayerState], pads: list[int]) -> torch.Tensor:
        """(B, kv_heads, kv_len): each row's kept set after its padding, which is never attended."""
        if len(states) == 1 and not pads[0]:
            return states[0].keep[None]
        return torch.stack([F.pad(state.keep, (pad, 0), value=False) for state, pad in zip(states, pads)])

    def step_order(self, state: LayerState) -> torch.Tensor | None:
        return None  # the cache is in token order


class SlotLayer(DynamicLayer):
    """A cache layer of fixed capacity: each row's next token overwrites the slot its row just evicted.

    ``free`` (B, kv_heads) is where each row's next token goes. Once a row's
    budget is reached every decode step evicts one of its tokens per head, so
    the layer stops growing and stops copying: a step writes one token per row
    instead of ``torch.cat``-ing the whole cache. A row that holds fewer tokens
    than the capacity (a shorter prompt in a batch) leaves its last slots unused
    (masked); only a step where some row has no slot left appends one.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.free: torch.Tensor | None = None

    def grow(self, slots: int) -> None:
        """Append ``slots`` unused slots to every row (only when a row needs more than the capacity)."""
        shape = (*self.keys.shape[:2], slots, self.keys.shape[3])
        self.keys = torch.cat([self.keys, self.keys.new_zeros(shape)], dim=-2)
        self.values = torch.cat([self.values, self.values.new_zeros(shape)], dim=-2)

    def update(self, key_states, value_states, *args, **kwargs):
        if self.free is None or key_states.shape[-2] != 1:
            raise RuntimeError("evict backend: a forward of more than one token on a pruned cache")
        index = self.free[:, :, None, None].expand_as(key_states)
        self.keys.scatter_(-2, index, key_states)
        self.values.scatter_(-2, index, value_states)
        self.free = None
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Slots in use; a slot waiting to be written does not count."""
        return super().get_seq_length() - (self.free is not None)


class EvictBackend:
    """Pruned tokens leave the KV cache, so it holds exactly the budget.

    After the prompt, each row's kept tokens are gathered, in order, into a
    :class:`SlotLayer` as wide as the largest row. From then on each step
    evicts one token per head and row, and the row's next token is written
    into that slot, so slots stop being in token order: ``state.slots`` maps
    each token to its slot, and :meth:`step_order` hands the session the
    step's scores back in token order. Keys are cached after RoPE, so a
    token's position travels with it.
    """

    name = "evict"

    def apply(self, state: LayerState, keep: torch.Tensor, cache, layer_idx: int) -> None:
        kept = keep[:, :-1]  # (kv_heads, K); the incoming slot is not cached yet
        heads, k = kept.shape
        in_order = torch.arange(k, device=kept.device).expand(heads, k)
        if state.positions is None:  # the prompt
            state.positions = in_order
        state.freed = None
        evicted = k - kept_count(k, state.budget)  # the same for every head; known without a device sync
        if evicted == 0:
            if state.slots is None:
                state.slots = in_order
            return
        if evicted == 1 and state.slots is not None:  # a decode step: no nonzero(), so no sync
            dropped = (~kept).int().argmax(1, keepdim=True)  # (kv_heads, 1)
            order = torch.arange(k - 1, device=kept.device)
            index = order + (order >= dropped)  # (kv_heads, K - 1), oldest first
            state.freed = state.slots.gather(1, dropped).squeeze(1)
        else:
            index = kept.nonzero(as_tuple=True)[1].view(heads, -1)  # (kv_heads, n_keep), oldest first
        state.scores = state.scores.gather(1, index)
        state.value_norms = state.value_norms.gather(1, index)
        state.positions = state.positions.gather(1, index)
        state.slots = (state.slots if state.slots is not None else in_order).gather(1, index)

    def keep_new_token(self, state: LayerState) -> None:
        """A step that prunes nothing: the next token takes a new slot."""
        state.freed = None

    def prepare_next(self, states: list[LayerState], cache, layer_idx: int, pads: list[int]) -> None:
        """After every row decided: compact the prompt's cache, then say where each row's next token goes."""
        if cache is None:  # use_cache=False: no next step to prepare
            return
        layer = cache.layers[layer_idx]
        if not isinstance(layer, SlotLayer):  # the prompt: gather each row's kept tokens into slots 0, 1, ...
            _check_compactable(layer, layer_idx, states, pads)
            layer = cache.layers[layer_idx] = _compact(layer, states, pads)
        for state in states:
            if state.freed is None:  # no slot was emptied: take the row's next unused one
                state.next_slot = torch.full_like(state.slots[:, 0], state.used)
                state.used += 1
            else:
                state.next_slot = state.freed
        needed = max(state.used for state in states) - layer.keys.shape[-2]
        if needed > 0:
            layer.grow(needed)
        layer.free = torch.stack([state.next_slot for state in states])

    def step_mask(self, states: list[LayerState], pads: list[int]) -> torch.Tensor | None:
        """(B, kv_heads, capacity): each row's used slots; None when every slot of every row is in use."""
        used = [state.used for state in states]
        capacity = max(used)
        if min(used) == capacity:
            return None
        slots = torch.arange(capacity, device=states[0].slots.device)
        held = slots < torch.tensor(used, device=slots.device)[:, None]  # (B, capacity)
        return held[:, None, :].expand(-1, states[0].slots.shape[0], -1)

    def step_order(self, state: LayerState) -> torch.Tensor:
        """(kv_heads, K + 1) the cache slot of each token of the row this step attended, oldest first.

        Also records it as ``state.slots``, the order :meth:`apply` decides in,
        and the new token's position (``state.seen``) in ``state.positions``.
        """
        new = state.next_slot
        state.slots = torch.cat([state.slots, new[:, None]], dim=1)
        state.positions = torch.cat([state.positions, torch.full_like(new[:, None], state.seen)], dim=1)
        return state.slots


def _check_compactable(layer, layer_idx: int, states: list[LayerState], pads: list[int]) -> None:
    """Refuse to evict from a cache layer that is not the keys and values the attention saw, token for token
    and head for head: a hybrid layer that also holds a state-space model's state, or keys expanded after
    caching (multi-head latent attention, JetMoE), where dropping a token from one head is not defined."""
    if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
        raise UnsupportedError(f"the evict backend removes tokens from a plain key/value cache, but layer "
                               f"{layer_idx}'s cache is a {type(layer).__name__} (it holds more than keys and "
                               "values, as in hybrid attention/state-space models); use backend='mask'")
    heads, length = states[0].scores.shape[0], states[0].seen + pads[0]
    if tuple(layer.keys.shape[1:3]) != (heads, length):
        raise UnsupportedError(f"the evict backend removes tokens per key/value head, but layer {layer_idx} caches "
                               f"(heads, tokens) {tuple(layer.keys.shape[1:3])} and its attention saw "
                               f"{(heads, length)}: its keys are expanded after caching (multi-head latent "
                               "attention, JetMoE); use backend='mask'")


def _compact(layer, states: list[LayerState], pads: list[int]) -> SlotLayer:
    """A SlotLayer holding row ``b``'s tokens ``states[b].slots`` (indices after its padding) in slots 0, 1, ...

    Rows that keep fewer tokens than the widest are padded with unused slots. Afterwards ``slots`` are slot indices.
    """
    capacity = max(state.slots.shape[1] for state in states)
    index = torch.stack([F.pad(state.slots + pad, (0, capacity - state.slots.shape[1]))
                         for state, pad in zip(states, pads)])  # (B, kv_heads, capacity)
    gather = index[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
    for state in states:
        state.used = state.slots.shape[1]
        state.slots = torch.arange(state.used, device=index.device).expand(index.shape[1], -1)
    return SlotLayer(layer.keys.gather(2, gather), layer.values.gather(2, gather))


BACKENDS = {b.name: b for b in (MaskBackend, EvictBackend)}
