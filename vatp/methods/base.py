"""What a token-importance method is: how it scores the prompt and each decode step, and its budget.

A method is a frozen dataclass whose parameters are its fields (in the spirit
of kvpress's presses). The session hands :meth:`Method.prompt_scores` one
row's :class:`Prompt` of one layer, and, at each decode step, hands
:meth:`Method.step_scores` the new query's attention in cache coordinates.
The policy (``vatp/policy.py``) then keeps the best scores within
:meth:`Method.budget`. A method knows nothing of backends or batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch

from .. import budget_hint
from ..names import method_label
from ..policy import Budget, accumulate, group_to_kv_heads, value_l1_norm


class Scores(Enum):
    """What a method's scores mean: the one declaration that the session, VATP, AdaKV and the policy read.

    * ``ACCUMULATED``: attention (>= 0), summed over the prompt's queries and each decode step's (H2O,
      Scissorhands);
    * ``LATEST``: the newest query's attention (>= 0), replaced at every decode step (TOVA);
    * ``PROMPT``: attention (>= 0) of the prompt's last queries, decided once; every new token is kept
      (SnapKV, CriticalKV, PyramidKV);
    * ``SIGNED``: not attention, of either sign, decided once at the prompt (KNorm's ``-||k||``);
    * ``NONE``: no score at all; tokens are kept by position (StreamingLLM's sinks and recent window).
    """

    ACCUMULATED = "accumulated attention"
    LATEST = "the newest query's attention"
    PROMPT = "the prompt's attention"
    SIGNED = "a signed score that is not attention"
    NONE = "no score"

    @property
    def is_attention(self) -> bool:
        """Attention probabilities: more means more important, a product with a value norm keeps that meaning
        (VATP), and KV heads compare (each query's attention sums to 1 in every head: AdaKV)."""
        return self in (Scores.ACCUMULATED, Scores.LATEST, Scores.PROMPT)

    @property
    def decides_while_decoding(self) -> bool:
        """Whether every decode step decides again (else the prompt's decision stands and new tokens are kept)."""
        return self in (Scores.ACCUMULATED, Scores.LATEST, Scores.NONE)


@dataclass
class Prompt:
    """One row's prompt at one layer, as a method's prompt scorer sees it (no padding).

    key (1, kv_heads, L, d), value (1, kv_heads, L, dv): the layer's cached
    keys (after RoPE) and values. ``attention`` (heads, L): the
    attention each key received, summed over the method's ``window`` of last
    queries, in ``score_dtype``; None for a method that does not use attention.
    ``budget``: the row's budget at this layer.
    """

    key: torch.Tensor
    value: torch.Tensor
    module: torch.nn.Module
    layer_idx: int
    attention: torch.Tensor | None
    sink_len: int
    score_dtype: torch.dtype
    budget: Budget

    @property
    def kv_heads(self) -> int:
        return self.key.shape[1]


@dataclass(frozen=True)
class Method:
    """A token-importance rule. Subclasses set ``name`` (their entry in :data:`vatp.names.METHODS`) and
    implement :meth:`budget`; the default scores are H2O's: attention accumulated.

    Class settings, read by the session and the policy:

    * ``scores``: what the scores mean (:class:`Scores`). It says whether attention is
      computed at all (where not, the model's own attention runs), whether decode steps
      decide again (where not, they run the model's own attention over what is kept, with
      no scoring), how :meth:`step_scores` updates them, and whether VATP and AdaKV apply;
    * ``window``: the last prompt queries whose attention :meth:`prompt_scores` needs
      (``None``: all of them);
    * ``protects_sinks``: the first ``sink_len`` tokens are always kept (the budget
      must hold them);
    * ``uses_values``: the session keeps each token's value term (:meth:`token_norms` at the
      prompt, :meth:`new_norms` at a decode step; L1 norms by default) for :meth:`step_scores`.
    """

    name: ClassVar[str] = ""
    scores: ClassVar[Scores] = Scores.ACCUMULATED
    window: ClassVar[int | None] = None
    protects_sinks: ClassVar[bool] = False
    uses_values: ClassVar[bool] = False

    @property
    def label(self) -> str:
        return method_label(self.name)

    def prompt_scores(self, prompt: Prompt) -> torch.Tensor:
        """Scores of one row's prompt tokens at one layer: (kv_heads, L), oldest first."""
        return group_to_kv_heads(prompt.attention, prompt.kv_heads)

    def step_scores(self, scores: torch.Tensor, step: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        """Scores after a decode step, per cache slot: (B, kv_heads, C) each.

        ``scores``: the running scores (the incoming token's slot holds 0, pruned
        and unused slots -inf); ``step``: the new query's attention, the mean over
        each GQA group (None where the scores are not attention); ``norms``: the value L1
        norms where ``uses_values``. A slot holds different tokens in different KV
        heads (the evict backend reuses freed slots per head): never mix heads.

        By default as :attr:`scores` says: accumulated attention adds the step's, the
        newest query's replaces them, and no score stays none.
        """
        if self.scores is Scores.LATEST:
            return step
        if self.scores is Scores.NONE:
            return scores
        return accumulate(scores, step)

    def token_norms(self, prompt: Prompt) -> torch.Tensor:
        """(kv_heads, L) the value term of each prompt token, in ``prompt.score_dtype`` (methods that use values)."""
        return value_l1_norm(prompt.value[0].to(prompt.score_dtype))

    def norm_weight(self, module, kv_heads: int, value_dim: int) -> torch.Tensor | None:
        """What :meth:`new_norms` reads of the layer besides the values (None: nothing)."""
        return None

    def new_norms(self, values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """values (B, kv_heads, 1, dv) of a decode step's token -> its value terms (B, kv_heads, 1)."""
        return value_l1_norm(values)

    def entry_scores(self, norms: torch.Tensor) -> torch.Tensor | None:
        """The score (B, kv_heads, 1) a decode step's new token enters with, from its value terms; None: 0."""
        return None

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        """The budget for ``ratio``. It must depend on the ratio only through ``n = int(ratio * prompt_len)``,
        and a larger ``n >= 1`` must never break a budget that works (:func:`vatp.budget_hint.min_ratio`)."""
        raise NotImplementedError

    def layer_budget(self, prompt_len: int, ratio: float, sink_len: int, layer: int, layers: int) -> Budget:
        """The budget at layer ``layer`` of ``layers``: :meth:`budget`, the same at every layer, unless a method
        spreads it over the layers (PyramidKV), keeping :meth:`budget`'s total over all of them."""
        return self.budget(prompt_len, ratio, sink_len)

    def checked_budget(self, prompt_len: int, ratio: float, sink_len: int = 0, sinks: bool | None = None) -> Budget:
        """:meth:`budget`, or a :class:`~vatp.budget_hint.BudgetError` naming the smallest ratio that works."""
        return budget_hint.checked_budget(self, prompt_len, ratio, sink_len, sinks)

    def min_ratio(self, prompt_len: int, sink_len: int = 0, sinks: bool | None = None) -> float | None:
        """The smallest ``heavy_ratio`` :meth:`checked_budget` accepts (:func:`vatp.budget_hint.min_ratio`)."""
        return budget_hint.min_ratio(self, prompt_len, sink_len, sinks)
