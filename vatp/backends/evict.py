"""The evict backend: pruned tokens leave the KV cache, so it holds the budget and no more.

After the prompt's decision each row's kept tokens are gathered, oldest
first, into the first slots of a cache as wide as the largest budget plus
the incoming token. From then on a method that prunes while decoding frees
one slot per row and KV head at every step, and the next token is written
into it (:class:`SlotLayer`): fixed shapes, one ``scatter`` of one token
instead of ``torch.cat`` of the whole cache, no host synchronisation. Slots
stop being in token order; decisions do not care, as each slot carries its
token's position. Keys are cached after RoPE, so a token's position travels
with it.

With AdaKV the KV heads keep budgets of their own; a cache as wide as the
largest head's budget would pad the others (up to the whole prompt). There
each row keeps its heads' slots one after the other, each head as many as
its budget (:class:`FlatSlotLayer`; :class:`FlatPrefixLayer` for a method
that prunes only the prompt), so the cache holds the budget.

Where the cache must grow (a method that prunes only the prompt, such as
SnapKV, or a row that keeps every token), each new token takes a new slot
at the end, as with the mask backend, but over the compacted cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .. import refusals
from ..attention_math import DecodeOperands
from ..policy import NO_POSITION
from .slots import Slots, append_slot, drop


@dataclass
class EvictState(Slots):
    """A layer's state under the evict backend. ``free`` (B, kv_heads, 1): the slot the next token is written
    into, already open for it (the layer reads the same tensor), or None where the cache grows by a slot per
    step; ``next_position``: ``cached`` as (B, kv_heads, 1), a view that follows it; ``operands``: the cache as a
    decode step attends it, views made once (a cache of fixed tensors), else None."""

    free: torch.Tensor | None = None
    next_position: torch.Tensor | None = None
    operands: DecodeOperands | None = None


class SlotLayer(DynamicLayer):
    """A cache layer of fixed capacity, (B, kv_heads, C, d): each row's next token overwrites, per KV head, the
    slot that ``free`` (B, kv_heads, 1) names (one its row freed, or its first unused one)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, free: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.free = keys, values, free
        # Views of ``free``, which changes in place: made once, they follow it (no op per step).
        self._key_slot = free[..., None].expand(*free.shape, keys.shape[-1])
        self._value_slot = free[..., None].expand(*free.shape, values.shape[-1])
        self.incoming = None  # the last token's value states, for their norms

    def update(self, key_states, value_states, *args, **kwargs):
        refusals.check_decode_step(key_states.shape[-2], self.get_seq_length(), True)
        self.keys.scatter_(-2, self._key_slot, key_states)
        self.values.scatter_(-2, self._value_slot, value_states)
        self.incoming = value_states
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """The slots a row can hold beside the incoming token's."""
        return self.keys.shape[-2] - 1


class FlatSlotLayer(SlotLayer):
    """A :class:`SlotLayer` whose KV heads have capacities of their own (AdaKV): each row holds its heads' slots
    one after the other, ``keys`` and ``values`` (B, S, d), S the largest row's total (:class:`Unpadded`).

    A decode step attends (B, kv_heads, C, d) gathered from them, one layer at a time.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, free: torch.Tensor, capacity: torch.Tensor):
        self.heads = Unpadded(capacity, keys.shape[2])
        super().__init__(self.heads.pack(keys), self.heads.pack(values), free)

    def update(self, key_states, value_states, *args, **kwargs):
        refusals.check_decode_step(key_states.shape[-2], self.get_seq_length(), True)
        slot = self.heads.where.gather(-1, self.free)  # (B, kv_heads, 1): where each head's next token goes
        self.keys.scatter_(1, slot.expand(*slot.shape[:2], self.keys.shape[-1]), key_states[:, :, 0])
        self.values.scatter_(1, slot.expand(*slot.shape[:2], self.values.shape[-1]), value_states[:, :, 0])
        self.incoming = value_states
        return self.heads.unpack(self.keys), self.heads.unpack(self.values)

    def get_seq_length(self) -> int:
        return self.heads.width - 1


class FlatPrefixLayer(DynamicLayer):
    """A growing cache layer whose prompt part keeps each KV head's own number of tokens (AdaKV on a method that
    prunes only the prompt): ``prefix`` holds them unpadded (:class:`Unpadded`), and ``keys`` and ``values``
    (B, kv_heads, T, d) the T tokens since, which every head keeps. A decode step attends the prefix gathered
    to (B, kv_heads, C, d), one layer at a time, then the tokens since."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, counts: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.heads = Unpadded(counts, keys.shape[2])
        self.keys, self.values = keys.new_empty(*keys.shape[:2], 0, keys.shape[3]), values.new_empty(
            *values.shape[:2], 0, values.shape[3])
        self.prefix = self.heads.pack(keys), self.heads.pack(values)

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states)
        return (torch.cat([self.heads.unpack(self.prefix[0]), keys], dim=-2),
                torch.cat([self.heads.unpack(self.prefix[1]), values], dim=-2))

    def get_seq_length(self) -> int:
        return self.heads.width + self.keys.shape[-2]


class Unpadded:
    """Each KV head's first ``capacity`` (B, kv_heads, 1) of ``width`` slots, held one head after the other.

    ``where`` (B, kv_heads, width): where head slot c of a row is held; slots past a head's capacity read its
    last one and are never attended nor written.
    """

    def __init__(self, capacity: torch.Tensor, width: int):
        self.width = width
        slot = torch.arange(width, device=capacity.device)
        start = capacity.cumsum(dim=1) - capacity  # where each head's slots begin in its row
        self.held = slot < capacity  # (B, kv_heads, width)
        self.where = start + torch.minimum(slot, (capacity - 1).clamp(min=0))
        self.total = int(capacity.sum(dim=1).max())  # one host sync per layer and prompt
        self._gather = self.where.flatten(1)[..., None]  # (B, kv_heads * width, 1)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, kv_heads, width, d) -> (B, S, d): the held slots only (at the prompt: boolean indexing syncs)."""
        rows = torch.arange(tensor.shape[0], device=tensor.device)[:, None, None].expand_as(self.where)
        out = tensor.new_zeros(tensor.shape[0], self.total, tensor.shape[3])
        out[rows[self.held], self.where[self.held]] = tensor[self.held]
        return out

    def unpack(self, flat: torch.Tensor) -> torch.Tensor:
        """(B, S, d) -> (B, kv_heads, width, d), each head's slots (a transient copy of one layer)."""
        batch, heads = self.where.shape[:2]
        return flat.gather(1, self._gather.expand(-1, -1, flat.shape[-1])).view(batch, heads, self.width, -1)


def held_bytes(layer) -> int:
    """The bytes of keys and values a cache layer holds (an unpadded prefix included)."""
    return sum(t.nbytes for t in (layer.keys, layer.values, *getattr(layer, "prefix", ())))


class EvictBackend:
    name = "evict"

    def after_prompt(self, layer_idx: int, slots: Slots, keep: torch.Tensor, cache, method) -> EvictState:
        """Gather each row's kept tokens (and their state), oldest first, into a compacted cache layer; open the
        first decode step's slot."""
        if cache is None:
            raise refusals.UnsupportedError("the evict backend compacts the model's cache: call the model (its "
                                           "decoder's pre-hook hands vatp the cache), not the session directly")
        layer = cache.layers[layer_idx]
        _check_compactable(layer, layer_idx, keep.shape[1], keep.shape[2])
        counts = keep.sum(dim=-1, keepdim=True)  # (B, kv_heads, 1) tokens kept
        grows = not method.scores.decides_while_decoding or any(b.keeps_all for b in slots.budgets)
        # Each head's slots: what it keeps now, or its budget if more, plus the incoming token's.
        capacity = counts if grows else torch.maximum(counts, slots.limits.heavy + slots.limits.recent) + 1
        width = int(capacity.max())  # one host sync per layer and prompt
        take = keep.to(torch.uint8).sort(dim=-1, descending=True, stable=True).indices[..., :width]

        def gather(tensor: torch.Tensor, fill) -> torch.Tensor:  # (B, H | 1, W[, d]) -> (B, H, width[, d])
            if tensor.dim() == 3:
                return _widen(tensor.expand_as(keep).gather(-1, take), width, fill)
            return _widen(tensor.gather(2, take[..., None].expand(*take.shape, tensor.shape[-1])), width, fill)

        held = torch.arange(width, device=keep.device) < counts  # (B, kv_heads, width)
        state = EvictState(**vars(slots))
        state.positions = gather(slots.positions, NO_POSITION)
        keys, values = gather(layer.keys, 0), gather(layer.values, 0)
        # Heads of a row with capacities of their own (AdaKV) are held one after the other, unpadded.
        even = bool((capacity == capacity.amax(dim=1, keepdim=True)).all())  # one host sync per layer and prompt
        if grows:
            if even:
                state.layer = DynamicLayer()
                state.layer.lazy_initialization(keys, values)
                state.layer.keys, state.layer.values = keys, values
            else:
                state.layer = FlatPrefixLayer(keys, values, counts)
            equal = not method.scores.decides_while_decoding and bool((counts == width).all())
            state.attended = None if equal else held  # None: every slot holds a kept token
        else:
            state.free = counts  # the first unused slot; the layer reads the same tensor
            state.layer = SlotLayer(keys, values, state.free) if even else FlatSlotLayer(keys, values, state.free,
                                                                                            capacity)
            state.attended = held
        cache.layers[layer_idx] = state.layer
        if not method.scores.decides_while_decoding:
            state.stop_scoring(keys.dtype)
            return state
        state.scores = gather(slots.scores, float("-inf"))
        state.norms = None if slots.norms is None else gather(slots.norms, 0)
        if state.free is not None:
            state.next_position = state.cached.expand_as(state.free)
            if type(state.layer) is SlotLayer:
                state.operands = DecodeOperands.of(state.layer.keys, state.layer.values, state.attended)
            _open(state)
        return state

    def incoming_values(self, state: EvictState, value: torch.Tensor) -> torch.Tensor:
        """The new token's values (B, kv_heads, 1, dv)."""
        return value[:, :, -1:] if state.free is None else state.layer.incoming

    def operands(self, state: EvictState, key: torch.Tensor, value: torch.Tensor) -> DecodeOperands:
        """The cache the step attends: views made once where the cache's tensors stay in place."""
        return state.operands or DecodeOperands.of(key, value, state.attended)

    def open_slot(self, state: EvictState, norms: torch.Tensor | None, entry: torch.Tensor | None = None) -> None:
        """The incoming token's slot, just written by the cache layer, was opened by the last step (attended,
        score 0, its position): here it gets its value norms, and its score ``entry`` if not 0. Where the cache
        grows, a slot is appended."""
        if state.free is None:
            append_slot(state, norms, entry)
            return
        if norms is not None:
            state.norms.scatter_(-1, state.free, norms)
        if entry is not None:
            state.scores.scatter_(-1, state.free, entry)

    def close_step(self, state: EvictState, scores: torch.Tensor, victim: torch.Tensor, leaves: torch.Tensor) -> None:
        """Store the step's scores, and open the next token's slot: the one that leaves, or, in a row that does not
        prune yet, its next unused slot. In place, so that a captured step keeps its tensors. Where the cache
        grows, the slot that leaves is masked, as by the mask backend."""
        if state.free is None:
            drop(state, scores, victim, leaves)
            return
        state.scores.copy_(scores)
        torch.where(leaves, victim, state.free + 1, out=state.free)
        _open(state)


def _open(state: EvictState) -> None:
    """Open the slot ``free`` for the next token: attended, score 0, its position (``cached``)."""
    state.attended.scatter_(-1, state.free, True)
    state.scores.scatter_(-1, state.free, 0.0)
    state.positions.scatter_(-1, state.free, state.next_position)


def _widen(tensor: torch.Tensor, width: int, fill) -> torch.Tensor:
    """``tensor`` (B, H, n[, d]) with ``fill`` after its n slots, up to ``width`` (the prompt may be shorter)."""
    missing = width - tensor.shape[2]
    if missing <= 0:
        return tensor
    shape = (*tensor.shape[:2], missing, *tensor.shape[3:])
    return torch.cat([tensor, tensor.new_full(shape, fill)], dim=2)


def _check_compactable(layer, layer_idx: int, heads: int, length: int) -> None:
    """Refuse to evict from a cache layer that is not the keys and values the attention saw, token for token
    and head for head: a hybrid layer that also holds a state-space model's state, or keys expanded after
    caching (multi-head latent attention, JetMoE), where dropping a token from one head is not defined."""
    if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
        raise refusals.UnsupportedError(f"the evict backend removes tokens from a plain key/value cache, but layer "
                                       f"{layer_idx}'s cache is a {type(layer).__name__} (it holds more than keys "
                                       "and values, as in hybrid attention/state-space models); use backend='mask'")
    if tuple(layer.keys.shape[1:3]) != (heads, length):
        raise refusals.UnsupportedError(f"the evict backend removes tokens per key/value head, but layer {layer_idx} "
                                       f"caches (heads, tokens) {tuple(layer.keys.shape[1:3])} and its attention "
                                       f"saw {(heads, length)}: its keys are expanded after caching (multi-head "
                                       "latent attention, JetMoE); use backend='mask'")
