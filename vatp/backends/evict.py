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

Where the cache must grow (a method that prunes only the prompt, such as
SnapKV, or a row that keeps every token), each new token takes a new slot
at the end, as with the mask backend, but over the compacted cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .. import refusals
from ..policy import NO_POSITION, drop_pruned
from .slots import Slots, append_slot


@dataclass
class EvictState(Slots):
    """A layer's state under the evict backend. ``free`` (B, kv_heads, 1): the slot the next token is written
    into (the layer's own ``free``), or None where the cache grows by a slot per step."""

    free: torch.Tensor | None = None


class SlotLayer(DynamicLayer):
    """A cache layer of fixed capacity: each row's next token overwrites a slot its row freed, per KV head.

    ``free`` (B, kv_heads, 1) says where; a row that holds fewer tokens than the
    capacity (a shorter prompt in a batch) writes into its first unused slot.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, free: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.free = keys, values, free
        self.incoming = None  # the last token's value states, for their norms

    def update(self, key_states, value_states, *args, **kwargs):
        refusals.check_decode_step(key_states.shape[-2], self.keys.shape[-2] - 1, True)
        self.keys.scatter_(-2, self.free[..., None].expand_as(key_states), key_states)
        self.values.scatter_(-2, self.free[..., None].expand_as(value_states), value_states)
        self.incoming = value_states
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """The slots a row can hold beside the incoming token's."""
        return self.keys.shape[-2] - 1


class EvictBackend:
    name = "evict"

    def after_prompt(self, layer_idx: int, slots: Slots, keep: torch.Tensor, cache, method) -> EvictState:
        """Gather each row's kept tokens (and their state), oldest first, into a compacted cache layer."""
        if cache is None:
            raise refusals.UnsupportedError("the evict backend compacts the model's cache: call the model (its "
                                           "decoder's pre-hook hands vatp the cache), not the session directly")
        layer = cache.layers[layer_idx]
        _check_compactable(layer, layer_idx, keep.shape[1], keep.shape[2])
        counts = keep.sum(dim=-1, keepdim=True)  # (B, kv_heads, 1) tokens kept
        kept = int(counts.max())  # one host sync per layer and prompt
        grows = not method.prunes_while_decoding or any(b.keeps_all for b in slots.budgets)
        width = kept if grows else max(kept, int((slots.limits.heavy + slots.limits.recent).max())) + 1
        take = keep.to(torch.uint8).sort(dim=-1, descending=True, stable=True).indices[..., :width]

        def gather(tensor: torch.Tensor, fill) -> torch.Tensor:  # (B, H | 1, W[, d]) -> (B, H, width[, d])
            if tensor.dim() == 3:
                return _widen(tensor.expand_as(keep).gather(-1, take), width, fill)
            return _widen(tensor.gather(2, take[..., None].expand(*take.shape, tensor.shape[-1])), width, fill)

        held = torch.arange(width, device=keep.device) < counts  # (B, kv_heads, width)
        state = EvictState(**vars(slots))
        state.positions = gather(slots.positions, NO_POSITION)
        keys, values = gather(layer.keys, 0), gather(layer.values, 0)
        if grows:
            state.layer = cache.layers[layer_idx] = DynamicLayer()
            state.layer.lazy_initialization(keys, values)
            state.layer.keys, state.layer.values = keys, values
            equal = not method.prunes_while_decoding and bool((counts == kept).all())
            state.attended = None if equal else held  # None: every slot holds a kept token
        else:
            state.free = counts  # the first unused slot; the layer reads the same tensor
            state.layer = cache.layers[layer_idx] = SlotLayer(keys, values, state.free)
            state.attended = held
        if method.prunes_while_decoding:
            state.scores = gather(slots.scores, float("-inf"))
            state.norms = None if slots.norms is None else gather(slots.norms, 0)
        else:
            state.stop_scoring(keys.dtype)
        return state

    def incoming_values(self, state: EvictState, value: torch.Tensor) -> torch.Tensor:
        """The new token's values (B, kv_heads, 1, dv)."""
        return value[:, :, -1:] if state.free is None else state.layer.incoming

    def open_slot(self, state: EvictState, norms: torch.Tensor | None) -> None:
        """The incoming token's slot, just written by the cache layer: attended, score 0, its position and norm.

        In place where the slots are fixed, so that a captured step keeps its tensors.
        """
        if state.free is None:
            append_slot(state, norms)
            return
        state.attended.scatter_(-1, state.free, True)
        state.scores.scatter_(-1, state.free, 0.0)
        state.positions.scatter_(-1, state.free, state.cached.expand_as(state.free))
        if norms is not None:
            state.norms.scatter_(-1, state.free, norms)

    def close_step(self, state: EvictState, scores: torch.Tensor, keep: torch.Tensor) -> None:
        """The kept slots are the next step's (pruned tokens' scores become -inf); the next token goes into the first
        slot left free. In place where the slots are fixed."""
        if state.free is None:
            state.scores, state.attended = drop_pruned(scores, keep), keep
            return
        state.scores.copy_(drop_pruned(scores, keep))
        state.attended.copy_(keep)
        # The first free slot (one exists: capacity > budget). Not argmin over uint8: inductor (torch 2.13)
        # returns 0 for it.
        state.free.copy_((~keep).to(torch.int32).argmax(dim=-1, keepdim=True))


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
