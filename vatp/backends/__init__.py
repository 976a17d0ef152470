"""How a keep decision is applied: masked (the paper's way) or evicted (memory freed).

Both keep a layer's state in cache coordinates (:class:`~.slots.Slots`) and
receive the same decisions from :mod:`vatp.policy` (the prompt's keep mask,
then at each decode step the slot that leaves); they differ only in where the
next token's slot is. The session calls a backend's hooks
in the order of :class:`Backend`.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..attention_math import DecodeOperands
from .evict import EvictBackend, EvictState, FlatPrefixLayer, FlatSlotLayer, SlotLayer, held_bytes
from .mask import MaskBackend
from .slots import Slots


class Backend(Protocol):
    """What the session asks of a backend, in call order.

    Once per layer, after the prompt's decision:

    1. ``after_prompt(layer_idx, slots, keep, cache, method) -> state``: apply the
       decision ``keep`` (B, kv_heads, W) over the prompt's slots; return the
       layer's state for decoding (and, for evict, compact ``cache``).

    Then at every decode step, after the cache took the new token:

    2. ``incoming_values(state, value) -> (B, kv_heads, 1, dv)``: the new token's
       values (asked only by methods that use value norms); ``operands(state, key,
       value) -> DecodeOperands``: the cache as the step attends it (methods that
       score attention);
    3. ``open_slot(state, norms, entry)``: the new token has its slot: attended, score
       ``entry`` (None: 0), its position (``state.cached - 1``) and value norms (None:
       not kept);
    4. ``close_step(state, scores, victim, leaves)``: store the step's scores and
       its decision (:func:`vatp.policy.step_victim`: per row and KV head, the slot
       that leaves where ``leaves``), and say where the next token goes.
    """

    name: str

    def after_prompt(self, layer_idx: int, slots: Slots, keep: torch.Tensor, cache, method) -> Slots: ...

    def incoming_values(self, state: Slots, value: torch.Tensor) -> torch.Tensor: ...

    def operands(self, state: Slots, key: torch.Tensor, value: torch.Tensor) -> DecodeOperands: ...

    def open_slot(self, state: Slots, norms: torch.Tensor | None, entry: torch.Tensor | None = None) -> None: ...

    def close_step(self, state: Slots, scores: torch.Tensor, victim: torch.Tensor, leaves: torch.Tensor) -> None: ...


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (MaskBackend, EvictBackend)}

__all__ = ["BACKENDS", "Backend", "EvictBackend", "EvictState", "FlatPrefixLayer", "FlatSlotLayer", "MaskBackend", "SlotLayer",
           "Slots", "held_bytes"]
