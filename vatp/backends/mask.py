"""The mask backend, the paper's way: the cache keeps every token; pruned ones are masked from the next step on.

Its slots are the columns of the model's own cache, in token order after each
row's left padding, so each new token takes a new slot at the end.
"""
from __future__ import annotations

import torch

from ..attention_math import DecodeOperands
from .slots import Slots, append_slot, drop


class MaskBackend:
    name = "mask"

    def after_prompt(self, layer_idx: int, slots: Slots, keep: torch.Tensor, cache, method) -> Slots:
        """The prompt's decision stands as a mask over the untouched cache."""
        state = Slots(**vars(slots))
        state.attended = keep
        state.layer = None if cache is None else cache.layers[layer_idx]
        if not method.scores.decides_while_decoding:
            state.stop_scoring(state.layer.keys.dtype if state.layer is not None else slots.scores.dtype)
        return state

    def incoming_values(self, state: Slots, value: torch.Tensor) -> torch.Tensor:
        """The new token's values (B, kv_heads, 1, dv): the cache's last column."""
        return value[:, :, -1:]

    def operands(self, state: Slots, key: torch.Tensor, value: torch.Tensor) -> DecodeOperands:
        """The cache the step attends, as the model's own cache holds it."""
        return DecodeOperands.of(key, value, state.attended)

    def open_slot(self, state: Slots, norms: torch.Tensor | None, entry: torch.Tensor | None = None) -> None:
        """The new token, just appended to the cache, takes a new slot at the end."""
        append_slot(state, norms, entry)

    def close_step(self, state: Slots, scores: torch.Tensor, victim: torch.Tensor, leaves: torch.Tensor) -> None:
        """The step's decision is the next step's mask; the pruned token's score becomes -inf."""
        drop(state, scores, victim, leaves)
