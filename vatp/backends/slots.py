"""A layer's pruning state in cache coordinates, shared by both backends.

Every quantity is one entry per cache slot, (B, kv_heads, C): the slot's
token's score, its value norm, its absolute position in its row, and
whether the next step attends it. The policy decides over these
(``vatp/policy.py``); a backend only says where the next token's slot is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..policy import Budget, Limits, leaving


@dataclass
class Slots:
    """One layer's pruning state for a batch, one entry per cache slot.

    scores (B, kv_heads, C) in the score dtype, -inf where no kept token is; None once a method
        that prunes nothing while decoding has decided the prompt.
    norms (B, kv_heads, C) value L1 norms, for methods that use values; else None.
    positions (B, kv_heads | 1, C) int64: the position of each slot's token in its row
        (``policy.NO_POSITION`` for padding and unused slots).
    attended (B, kv_heads, C) bool: the slots of the tokens kept for the next step (its
        incoming token's slot is added when it comes); None: every slot (no mask needed).
    cached (B, 1, 1) int64: the tokens each row has seen, K (pruned ones included).
    budgets: each row's budget at this layer; limits: the same as tensors.

    layer: the cache layer that holds these slots' keys and values (None without a cache).
    value_weight: what a decode step's value term reads of the layer besides the values (the method's
        ``norm_weight``: ``o_proj``'s slices for VATP's ``wo_l1``), or None.

    A method that prunes only the prompt keeps only ``cached`` and ``bias`` up to date while
    decoding: its ``attended`` and ``positions`` stay the prompt's (the tokens appended since, all
    kept, are :attr:`decoded`), and ``bias`` (B, kv_heads, 1, C), 0 or -inf in the model dtype,
    is the mask its decode steps hand the model's own attention (None: every slot).
    """

    scores: torch.Tensor | None
    norms: torch.Tensor | None
    positions: torch.Tensor
    attended: torch.Tensor | None
    cached: torch.Tensor
    budgets: list[Budget]
    limits: Limits
    layer: object = None
    bias: torch.Tensor | None = None
    value_weight: torch.Tensor | None = None

    @property
    def decoded(self) -> int:
        """Tokens appended since the prompt by a method that prunes only the prompt (it does not track them)."""
        if self.scores is not None or self.layer is None:
            return 0
        return self.layer.get_seq_length() - self.positions.shape[-1]

    def stop_scoring(self, dtype: torch.dtype) -> None:
        """After the prompt's decision of a method that prunes only the prompt: drop what only scoring needs,
        and keep the decision as an additive mask in the model's ``dtype`` (where some slot is not kept)."""
        self.scores = self.norms = None
        if self.attended is not None:
            bias = torch.zeros(self.attended.shape, dtype=dtype, device=self.attended.device)
            self.bias = bias.masked_fill_(~self.attended, float("-inf"))[:, :, None, :]


    # -- in token order, for inspection (each call syncs with the device) -------------------------
    def token_mask(self, row: int = 0) -> torch.Tensor:
        """(kv_heads, K + 1) bool over row ``row``'s tokens in order: those the next step attends, the
        incoming one (column K) included. The paper's code's mask."""
        index, cached = self._token_index(row, kept=True)
        mask = torch.zeros(index.shape[0], cached + 2, dtype=torch.bool, device=index.device)
        mask = mask.scatter_(1, index, True)[:, :cached + 1]
        mask[:, cached] = True
        return mask

    def token_values(self, values: torch.Tensor, row: int = 0, fill: float = 0.0) -> torch.Tensor:
        """(kv_heads, K) ``values`` (B, kv_heads, C), e.g. ``scores`` or ``norms``, of row ``row``'s tokens in
        order, pruned ones included where a slot still holds them; ``fill`` for the others (evicted)."""
        index, cached = self._token_index(row, kept=False)
        return values.new_full((index.shape[0], cached + 2), fill).scatter_(1, index, values[row])[:, :cached]

    def kept_positions(self, row: int = 0) -> list[list[int]]:
        """Per KV head, the positions of row ``row``'s tokens kept for the next step, in order."""
        return [p.nonzero().flatten().tolist() for p in self.token_mask(row)[:, :-1]]

    def _token_index(self, row: int, kept: bool) -> tuple[torch.Tensor, int]:
        """(kv_heads, C) each slot's column in a (kv_heads, K + 2) row in token order: its token's position
        where it holds a token (a kept one if ``kept``), else the spare last column; and K."""
        cached = int(self.cached[row])
        heads = (self.positions if self.attended is None else self.attended).shape[1]
        positions = self.positions[row].expand(heads, -1)
        held = positions >= 0
        if kept and self.attended is not None:
            held = held & self.attended[row]
        if self.decoded:  # tokens appended since the prompt by a method that prunes only the prompt: all kept
            new = torch.arange(cached - self.decoded, cached, device=positions.device).expand(heads, -1)
            positions, held = torch.cat([positions, new], dim=1), torch.cat([held, torch.ones_like(new, dtype=bool)], 1)
        return torch.where(held, positions, cached + 1), cached


def append_slot(state: Slots, new_norms: torch.Tensor | None, entry: torch.Tensor | None = None) -> None:
    """Give the incoming token a new slot at the end: attended, score ``entry`` (None: 0), its position
    (``cached - 1``) and value norm.

    new_norms and entry (B, kv_heads, 1) or None. A method that decides nothing while decoding only widens
    its attention mask (and not even that where every slot is attended).
    """
    if state.scores is None:
        if state.bias is not None:
            state.bias = F.pad(state.bias, (0, 1))
        return
    state.attended = F.pad(state.attended, (0, 1), value=True)
    state.scores = F.pad(state.scores, (0, 1)) if entry is None else torch.cat([state.scores, entry], dim=-1)
    state.positions = torch.cat([state.positions, state.cached.expand(-1, state.positions.shape[1], 1) - 1], dim=-1)
    if new_norms is not None:
        state.norms = torch.cat([state.norms, new_norms], dim=-1)


def drop(state: Slots, scores: torch.Tensor, victim: torch.Tensor, leaves: torch.Tensor) -> None:
    """A decode step's decision where slots stay in place (the mask backend, a growing cache): the slot that
    leaves (:func:`vatp.policy.step_victim`) is no longer attended and scores -inf, never to be ranked again."""
    gone = leaving(state.attended, victim, leaves)
    state.attended = state.attended > gone
    state.scores = scores.masked_fill(gone, float("-inf"))
