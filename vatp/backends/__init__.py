"""How a keep decision is applied: masked (the paper's way) or evicted (memory freed).

Both keep a layer's state in cache coordinates (:class:`~.slots.Slots`) and
receive the same decisions from :func:`vatp.policy.keep_slots`; they differ
only in where the next token's slot is. The session calls a backend's hooks
in the order of :class:`Backend`.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .evict import EvictBackend, EvictState, SlotLayer
from .mask import MaskBackend, MaskState
from .slots import Slots


class Backend(Protocol):
    """What the session asks of a backend, in call order.

    Once per layer, after the prompt's decision:

    1. ``after_prompt(layer_idx, slots, keep, cache, method) -> state``: apply the
       decision ``keep`` (B, kv_heads, W) over the prompt's slots; return the
       layer's state for decoding (and, for evict, compact ``cache``).

    Then at every decode step, after the cache took the new token:

    2. ``incoming_values(state, value) -> (B, kv_heads, 1, dv)``: the new token's
       values (asked only by methods that use value norms);
    3. ``open_slot(state, norms)``: give the new token its slot: attended, score 0,
       its position (``state.cached``) and value norms (None: not kept);
    4. ``close_step(state, scores, keep)``: store the step's scores and decision,
       and say where the next token goes.
    """

    name: str

    def after_prompt(self, layer_idx: int, slots: Slots, keep: torch.Tensor, cache, method) -> Slots: ...

    def incoming_values(self, state: Slots, value: torch.Tensor) -> torch.Tensor: ...

    def open_slot(self, state: Slots, norms: torch.Tensor | None) -> None: ...

    def close_step(self, state: Slots, scores: torch.Tensor, keep: torch.Tensor) -> None: ...


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (MaskBackend, EvictBackend)}

__all__ = ["BACKENDS", "Backend", "EvictBackend", "EvictState", "MaskBackend", "MaskState", "SlotLayer", "Slots"]
