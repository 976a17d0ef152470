"""The mask backend, the paper's way: the cache keeps every token; pruned ones are masked from the next step on.

Its slots are the columns of the model's own cache, in token order after each
row's left padding, so each new token takes a new slot at the end.
"""
from __future__ import annotations

import torch

from ..policy import drop_pruned
from .slots import Slots, append_slot


class MaskState(Slots):
    """A layer's state under the mask backend: :class:`Slots`, one per column of the model's own cache."""


class MaskBackend:
    name = "mask"

    def after_prompt(self, layer_idx: int, slots: Slots, keep: torch.Tensor, cache, method) -> MaskState:
        """The prompt's decision stands as a mask over the untouched cache."""
        state = MaskState(**vars(slots))
        state.attended = keep
        state.layer = None if cache is None else cache.layers[layer_idx]
        if not method.prunes_while_decoding:
            state.stop_scoring(state.layer.keys.dtype if state.layer is not None else slots.scores.dtype)
        return state

    def incoming_values(self, state: MaskState, value: torch.Tensor) -> torch.Tensor:
        """The new token's values (B, kv_heads, 1, dv): the cache's last column."""
        return value[:, :, -1:]

    def open_slot(self, state: MaskState, norms: torch.Tensor | None) -> None:
        """The new token, just appended to the cache, takes a new slot at the end."""
        append_slot(state, norms)

    def close_step(self, state: MaskState, scores: torch.Tensor, keep: torch.Tensor) -> None:
        """The step's decision is the next step's mask; pruned tokens' scores become -inf."""
        state.scores, state.attended = drop_pruned(scores, keep), keep
