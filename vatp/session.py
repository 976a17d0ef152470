"""VatpSession: per-sample pruning state and the attention call that uses it.

One session per enabled model. For every attention layer it computes the
attention, hands the method (``config.scorer``) the attention each token
received, at prefill and at each decode step, asks the policy which tokens to
keep, and hands that decision to the backend. It knows no method by name.

A batch of left-padded prompts is handled row by row where decisions are
made: each row is scored on its own tokens (its padding is never scored,
kept or counted), with the budget of its own length, exactly as if it ran
alone; decode steps attend all rows in one call.
"""
from __future__ import annotations

import warnings

import torch

from . import policy, scoring, support
from .backends import BACKENDS, LayerState
from .config import VatpConfig


class VatpSession:
    def __init__(self, config: VatpConfig):
        self.config = config
        self.method = config.scorer
        self.backend = BACKENDS[config.backend]()
        self.rows: list[dict[int, LayerState]] = []  # per batch row: layer index -> its state
        self.pads: list[int] = []  # per batch row: padding tokens before its prompt (set before each prompt)
        self.cache = None  # the KV cache of the current forward (evict backend)
        self.attended: set[int] = set()  # layers attended in the current forward (cleared before each)
        self._row_masks = None  # (the prompt's mask, each row's own mask): worked out once per mask
        scorings = {"eager": lambda: scoring.eager_prefill, "chunked": lambda: self._chunked_prefill,
                    "fused": _load_fused_prefill}
        self._prefill = scorings[config.resolved_scoring]()

    @property
    def layers(self) -> dict[int, LayerState]:
        """The per-layer state of the sample (of the first row of a batch; ``rows[b]`` for row ``b``)."""
        return self.rows[0] if self.rows else {}

    def reset(self) -> None:
        """Forget the current sample. A new prompt (empty cache) also resets."""
        self.rows = []
        self.cache = None
        self._row_masks = None

    def budget(self, prompt_len: int) -> policy.Budget:
        """The budget for a prompt of this length; raises BudgetError with a fix if there is none."""
        return self.method.checked_budget(prompt_len, self.config.heavy_ratio, self.config.sink_len)

    def seen_tokens(self) -> int:
        """Absolute length of the current sample, padding included (the cache may be shorter after eviction)."""
        return self.layers[0].seen + (self.pads[0] if self.pads else 0) if 0 in self.layers else 0

    # -- the attention call ---------------------------------------------------
    def attend(self, layer_idx: int, query, key, value, mask, scaling, window: support.Window | None = None):
        """query (B, heads, q, d); key (B, kv_heads, kv, d); value (B, kv_heads, kv, dv) -> ((B, q, heads, dv), None).

        A layer's ``window`` (sliding, or chunks) is refused once the longest row outgrows it.
        """
        support.check_called_once(layer_idx, self.attended)
        q_len, kv_len = query.shape[2], key.shape[2]
        if q_len == kv_len:  # empty cache before this call: a new sample
            support.check_window(layer_idx, window, kv_len)
            if mask is not None and mask.is_floating_point():
                support.check_additive_mask(layer_idx, mask, torch.finfo(mask.dtype).min)
            return self._attend_prompt(layer_idx, query, key, value, mask, scaling)
        states = [row.get(layer_idx) for row in self.rows]
        if not states or None in states or q_len != 1 or len(states) != query.shape[0]:
            raise ValueError(
                "vatp prunes a cache it filled itself: run the whole prompt in one forward, "
                f"then one token per step (got {q_len} new tokens on a cache of {kv_len - q_len})"
            )
        support.check_window(layer_idx, window, max(state.seen for state in states) + 1)
        return self._attend_step(layer_idx, states, query, key, value, scaling)

    def _row_pads(self, batch: int) -> list[int]:
        """Each row's padding, as the pre-hook noted it (none when the session is called without it)."""
        return self.pads if len(self.pads) == batch else [0] * batch

    def _attend_prompt(self, layer_idx, query, key, value, mask, scaling):
        batch = query.shape[0]
        pads = self._row_pads(batch)
        if layer_idx == 0 or len(self.rows) != batch:
            self.rows = [{} for _ in range(batch)]
        if batch == 1 and pads[0] == 0:  # the paper's case, as it computes it
            out = self._score_prompt(layer_idx, 0, query, key, value, mask, scaling)
        else:
            out = query.new_zeros(batch, query.shape[2], query.shape[1], value.shape[3])  # padding rows stay 0
            masks = [None] * batch if mask is None else self._own_masks(mask, pads)
            for b, pad in enumerate(pads):  # each row alone: its own tokens under its own mask (padding is never scored)
                rows = slice(b, b + 1), slice(None), slice(pad, None)
                out[b:b + 1, pad:] = self._score_prompt(layer_idx, b, query[rows], key[rows], value[rows], masks[b],
                                                        scaling)
        self.backend.prepare_next([row[layer_idx] for row in self.rows], self.cache, layer_idx, pads)
        return out, None

    def _own_masks(self, mask, pads: list[int]) -> list:
        """Each row's own prompt mask (:func:`scoring.row_mask`), worked out once per mask: layers share the model's."""
        if self._row_masks is None or self._row_masks[0] is not mask:  # held, so a new mask is a new object
            self._row_masks = mask, [scoring.row_mask(mask, b, pad) for b, pad in enumerate(pads)]
        return self._row_masks[1]

    def _score_prompt(self, layer_idx, row, query, key, value, mask, scaling):
        """One row's prompt: query (1, heads, L, d) -> output (1, L, heads, d); its state and decision."""
        kv_heads, prompt_len = key.shape[1], key.shape[2]
        budget = self.budget(prompt_len)
        if budget.recent == 0 and layer_idx == 0:
            warnings.warn(f"heavy_ratio {self.config.heavy_ratio} gives a recent budget of 0 for a "
                          f"{prompt_len}-token prompt: nothing is pruned (as in the paper's code)", stacklevel=3)
        score_dtype = self.config.resolved_score_dtype(query.dtype)
        out, sums = self._prefill(query, key, value, mask, scaling, self.method.query_window, score_dtype)
        norms = policy.value_l1_norm(value[0].to(score_dtype))  # (kv_heads, L)
        scores = self.method.prompt_scores(sums, kv_heads, norms, self.config.sink_len)  # (kv_heads, L)
        state = LayerState(scores=scores, value_norms=norms, budget=budget, seen=prompt_len)
        self.rows[row][layer_idx] = state
        self._decide(layer_idx, row, state)
        return out

    def _attend_step(self, layer_idx, states, query, key, value, scaling):
        self._row_masks = None  # the prompt's mask is not needed any more
        pads = self._row_pads(len(states))
        keep = self.backend.step_mask(states, pads)  # (B, kv_heads, kv_len) or None
        out, probs = scoring.decode_step(query, key, value, keep, scaling, states[0].scores.dtype)
        kv_heads = key.shape[1]
        for b, (state, pad) in enumerate(zip(states, pads)):
            step = policy.group_to_kv_heads(probs[b], kv_heads)  # (kv_heads, kv_len), in cache order
            order = self.backend.step_order(state)  # evict: slots are not in token order
            if order is None:  # the cache holds the row's tokens in order, after its padding
                step, new_value = step[:, pad:], value[b, :, -1:]
            else:
                step = step.gather(1, order)
                new_value = value[b].gather(1, order[:, -1:, None].expand(-1, -1, value.shape[-1]))
            new_norm = policy.value_l1_norm(new_value.to(state.scores.dtype))
            state.value_norms = torch.cat([state.value_norms, new_norm], dim=1)
            scores = self.method.step_scores(state.scores, step, state.value_norms)
            state.seen += 1
            if scores is None:  # the method prunes nothing while decoding
                self.backend.keep_new_token(state)
            else:
                state.scores = scores
                self._decide(layer_idx, b, state)
        self.backend.prepare_next(states, self.cache, layer_idx, pads)
        return out, None

    def _decide(self, layer_idx: int, row: int, state: LayerState) -> None:
        keep = policy.keep_mask(state.scores, state.budget)
        state.scores = policy.drop_pruned(state.scores, keep)
        self.backend.apply(state, keep, self.cache, layer_idx)

    def _chunked_prefill(self, query, key, value, mask, scaling, window, score_dtype):
        return scoring.chunked_prefill(query, key, value, mask, scaling, window, self.config.chunk_size, score_dtype)


def _load_fused_prefill():
    """The Triton scoring, imported only when asked for (triton is optional)."""
    try:
        from .fused import fused_prefill
    except ImportError as err:
        raise ImportError(f"scoring='fused' needs triton ({err}); pip install triton, "
                          "or use scoring='chunked'") from err
    return fused_prefill
