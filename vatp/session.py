"""VatpSession: per-sample pruning state and the attention call that uses it.

One session per enabled model. For every attention layer it computes the
attention, hands the method (``config.scorer``) the attention each token
received, at prefill and at each decode step, asks the policy which tokens to
keep, and hands that decision to the backend. It knows no method by name.
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
        self.layers: dict[int, LayerState] = {}
        self.cache = None  # the KV cache of the current forward (evict backend)
        scorings = {"eager": lambda: scoring.eager_prefill, "chunked": lambda: self._chunked_prefill,
                    "fused": _load_fused_prefill}
        self._prefill = scorings[config.resolved_scoring]()

    def reset(self) -> None:
        """Forget the current sample. A new prompt (empty cache) also resets."""
        self.layers.clear()
        self.cache = None

    def budget(self, prompt_len: int) -> policy.Budget:
        """The budget for a prompt of this length; raises BudgetError with a fix if there is none."""
        return self.config.budget(prompt_len)

    def seen_tokens(self) -> int:
        """Absolute length of the current sample (the cache may be shorter after eviction)."""
        return self.layers[0].seen if 0 in self.layers else 0

    # -- the attention call ---------------------------------------------------
    def attend(self, layer_idx: int, query, key, value, mask, scaling, sliding_window: int | None = None):
        """query (1, heads, q, d); key, value (1, kv_heads, kv, d) -> ((1, q, heads, d), None).

        A layer's ``sliding_window`` is refused once the sequence outgrows it.
        """
        if query.shape[0] != 1:
            raise ValueError(f"vatp supports batch size 1 (as the paper's code), got {query.shape[0]}")
        q_len, kv_len = query.shape[2], key.shape[2]
        if q_len == kv_len:  # empty cache before this call: a new sample
            support.check_window(layer_idx, sliding_window, kv_len)
            return self._attend_prompt(layer_idx, query, key, value, mask, scaling)
        state = self.layers.get(layer_idx)
        if state is None or q_len != 1:
            raise ValueError(
                "vatp prunes a cache it filled itself: run the whole prompt in one forward, "
                f"then one token per step (got {q_len} new tokens on a cache of {kv_len - q_len})"
            )
        support.check_window(layer_idx, sliding_window, state.seen + 1)
        return self._attend_step(layer_idx, state, query, key, value, scaling)

    def _attend_prompt(self, layer_idx, query, key, value, mask, scaling):
        kv_heads, prompt_len = key.shape[1], key.shape[2]
        budget = self.budget(prompt_len)
        if budget.recent == 0 and layer_idx == 0:
            warnings.warn(f"heavy_ratio {self.config.heavy_ratio} gives a recent budget of 0 for a "
                          f"{prompt_len}-token prompt: nothing is pruned (as in the paper's code)", stacklevel=2)
        score_dtype = self.config.resolved_score_dtype(query.dtype)
        out, sums = self._prefill(query, key, value, mask, scaling, self.method.query_window, score_dtype)
        norms = policy.value_l1_norm(value[0].to(score_dtype))  # (kv_heads, L)
        scores = self.method.prompt_scores(sums, kv_heads, norms, self.config.sink_len)  # (kv_heads, L)
        state = LayerState(scores=scores, value_norms=norms, budget=budget, seen=prompt_len)
        self.layers[layer_idx] = state
        self._decide(layer_idx, state)
        return out, None

    def _attend_step(self, layer_idx, state, query, key, value, scaling):
        keep = self.backend.step_mask(state)
        out, probs = scoring.decode_step(query, key, value, keep, scaling, state.scores.dtype)
        step = policy.group_to_kv_heads(probs, key.shape[1])  # (kv_heads, kv_len), in cache order
        order = self.backend.step_order(state, key.shape[2])  # evict: slots are not in token order
        if order is None:
            new_value = value[0, :, -1:]
        else:
            step = step.gather(1, order)
            new_value = value[0].gather(1, order[:, -1:, None].expand(-1, -1, value.shape[-1]))
        new_norm = policy.value_l1_norm(new_value.to(state.scores.dtype))
        state.value_norms = torch.cat([state.value_norms, new_norm], dim=1)
        scores = self.method.step_scores(state.scores, step, state.value_norms)
        state.seen += 1
        if scores is None:  # the method prunes nothing while decoding
            self.backend.keep_new_token(state)
        else:
            state.scores = scores
            self._decide(layer_idx, state)
        return out, None

    def _decide(self, layer_idx: int, state: LayerState) -> None:
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
