"""A layer's pruning state beside the engine's paged cache, and the pages a request's slots are on.

transformers' paged cache keeps each layer's keys and values in one tensor of pages (token slots), (pages,
kv_heads, d); a request's slot j is on page ``block_table[j // block_size] * block_size + j % block_size``, and
the engine hands the attention function those pages as ``read_index`` (a request's slots in order, one request
after the other). vatp keeps a deciding request's state in the same coordinates, per page and KV head, so that a
decode step reads it with the pages it reads the keys with, and it goes where the request's blocks go.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PageState:
    """One layer's state of every page: ``scores`` and ``norms`` (pages, kv_heads) in the score dtype (``norms``
    None for methods that use no values), ``positions`` (pages, kv_heads) int64 (the position of the page's
    token in its request), ``attended`` (pages, kv_heads) bool. Pages hold garbage until their request's prompt
    ends; a decode step reads a request's own pages only."""

    scores: torch.Tensor
    norms: torch.Tensor | None
    positions: torch.Tensor
    attended: torch.Tensor

    @classmethod
    def empty(cls, pages: int, kv_heads: int, score_dtype: torch.dtype, values: bool, device) -> PageState:
        shape = (pages, kv_heads)
        return cls(torch.zeros(shape, dtype=score_dtype, device=device),
                   torch.zeros(shape, dtype=score_dtype, device=device) if values else None,
                   torch.full(shape, -1, dtype=torch.long, device=device),
                   torch.zeros(shape, dtype=torch.bool, device=device))

    def read(self, pages: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state of ``pages`` (R, C): each quantity (R, kv_heads, C), in cache coordinates as the policy takes it."""
        return {name: tensor[pages].transpose(1, 2) for name, tensor in vars(self).items() if tensor is not None}

    def write(self, pages: torch.Tensor, heads: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """Store ``state`` (R, kv_heads, C) on ``pages`` (R, C); ``heads`` (1, kv_heads, 1) or (kv_heads, 1)."""
        for name, value in state.items():
            getattr(self, name)[pages[:, None, :].expand_as(value), heads.expand_as(value)] = value


def slot_pages(read_index: torch.Tensor, starts: torch.Tensor, slots: torch.Tensor, width: int, trash: int):
    """The pages of each request's first ``slots`` (R,) slots, which ``read_index`` holds from ``starts`` (R,) on:
    (R, width) int64, padded with the ``trash`` page, and (R, width) bool, which are the request's."""
    slot = torch.arange(width, device=read_index.device)
    valid = slot < slots[:, None]
    return read_index[torch.where(valid, starts[:, None] + slot, 0)].masked_fill(~valid, trash), valid
