"""What vatp knows of each request of the engine, and the plan of one step that the attention function follows.

A request goes through three phases: its prompt's chunks (the engine may split a prompt over several steps),
the step where its prompt ends (its scores are complete: vatp decides and compacts what it keeps into the
request's first slots), then one token per step. Its cache is one row of slots, as the evict backend's
``SlotLayer``; the engine's own pages hold them, and ``RequestState.position_offset`` is kept at the slots a
request holds (its physical length), the logical one (RoPE positions) being added back by the decoder's
pre-hook.

Kinds, from the method and the prompt's budget:

* ``decides`` (H2O, Scissorhands, TOVA, StreamingLLM): ``budget.total + 1`` slots at most, each step writes the
  new token into the slot its request freed (per KV head) and decides which one leaves;
* ``prompt`` (SnapKV, KNorm, CriticalKV, PyramidKV): the prompt is compacted once, then every new token is kept,
  appended by the engine as usual; a layer that keeps fewer of the prompt (PyramidKV) masks its spare slots;
* ``whole``: a prompt too short for the method's budget (where pred.py refuses with ``BudgetError``) is kept
  whole: a server must answer a short chat. It is logged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..policy import Budget


@dataclass
class Tracked:
    """One request as vatp follows it. ``state``: the engine's ``RequestState`` (a soft reset makes another object
    under the same id); ``budget`` None: kept whole; ``kept``: per layer, the prompt tokens each KV head keeps
    (set when the prompt ends); ``held``: the slots holding kept tokens, the incoming one aside (None until the
    prompt ends); ``sums``: per layer, (heads, prompt tokens so far) float32, the attention summed over the
    method's window of queries, chunk after chunk."""

    state: object
    prompt_len: int
    budget: Budget | None
    decides: bool
    kept: list[int] = field(default_factory=list)
    held: int | None = None
    sums: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "whole" if self.budget is None else "decides" if self.decides else "prompt"

    def position_offset(self) -> int:
        """What the engine's ``position_offset`` must be before this request's next token: the slots it holds."""
        return self.held

    def position_delta(self) -> int:
        """Logical minus physical position of the next token: the tokens seen, less the slots held."""
        return self.prompt_len + len(self.state.generated_tokens) - 1 - self.held


@dataclass
class Segment:
    """A request's part of a step's packed batch: its queries ``query`` (start, stop) in the packed query, its
    slots' pages ``keys`` (start, stop) in the engine's ``read_index``; ``past``: the slots its cache held before
    this step; ``ends_prompt``: its prompt's last chunk."""

    tracked: Tracked
    query: tuple[int, int]
    keys: tuple[int, int]
    past: int
    ends_prompt: bool


@dataclass
class StepPlan:
    """One step of the engine, planned by vatp's scheduler once the batch is known.

    ``prefill``: the prompt chunks; ``pruned``: decode steps of deciding requests, batched; ``plain``: decode
    steps of the others, batched; ``deltas`` (1, total query tokens) int32: what the pre-hook adds to
    ``position_ids``, or None (nothing to add); ``pruned_tokens``: the query indices of ``pruned`` (their
    engine-given write slots are not theirs: they write into the slot their request freed).
    """

    prefill: list[Segment]
    pruned: list[Segment]
    plain: list[Segment]
    deltas: torch.Tensor | None
    tensors: dict = field(default_factory=dict)  # device tensors made at the step's first layer, then shared
