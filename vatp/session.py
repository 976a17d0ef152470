"""VatpSession: the pruning state of one sample (a batch of rows) and the attention call that uses it.

One session per enabled model. For every attention layer it computes the
attention, hands the method (``config.scorer``) what it scores, at the
prompt and at each decode step, asks the policy which cache slots to keep,
and hands that decision to the backend. It knows no method by name.

A left-padded batch is one state per layer, (B, kv_heads, C) tensors in
cache coordinates. At the prompt each row is scored alone on its own tokens
(its padding is never scored, kept or counted), with the budget of its own
length; every decision after that is one batched call whatever the batch
size, and each row ends up exactly as if it ran alone.
"""
from __future__ import annotations

import warnings

import torch

from . import adakv, attention_math, policy, refusals
from .backends import BACKENDS, Slots
from .config import VatpConfig
from .methods import Prompt


class VatpSession:
    def __init__(self, config: VatpConfig, num_layers: int = 1):
        self.config = config
        self.num_layers = num_layers  # attention layers of the model (a method may spread its budget over them)
        self.method = config.scorer
        self.backend = BACKENDS[config.backend]()
        self.engine = None  # the continuous-batching side (vatp.engine.Engine), set by vatp.enable
        self.layers: dict[int, Slots] = {}  # layer index -> its state, for the whole batch
        self.pads: list[int] = []  # per batch row: padding tokens before its prompt
        self.cache = None  # the KV cache of the sample (the evict backend compacts it)
        self.attended: set[int] = set()  # layers attended in the prompt's forward
        self._row_masks = None  # (the prompt's mask, each row's own mask): worked out once per mask
        self._cached = None  # (B, 1, 1) the tokens each row has seen, shared by every layer's state
        self._limits: dict[tuple, policy.Limits] = {}  # each row's budgets -> their tensors, once per prompt
        self._budgets: dict[int, policy.Budget] = {}  # prompt length -> its checked budget (the settings are fixed)
        scorings = {"eager": lambda: attention_math.eager_prefill, "chunked": lambda: self._chunked_prefill,
                    "window": lambda: self._window_prefill, "fused": _load_fused_prefill}
        self._prefill = scorings[config.resolved_scoring]()
        if config.compile is not None:  # one graph for every layer: the state is in its arguments
            self._decode = torch.compile(self._decode, fullgraph=True, mode=config.compile)
            self._decode_kept = torch.compile(self._decode_kept, fullgraph=True, mode=config.compile)

    def start_sample(self, pads: list[int], cache) -> None:
        """A new prompt (the decoder's pre-hook calls this on an empty cache): forget the last sample."""
        self.layers, self.pads, self.cache, self._row_masks, self._limits = {}, pads, cache, None, {}
        self._cached = None
        self.attended.clear()

    def reset(self) -> None:
        """Forget the current sample (the paper's ``_reset_masks``); a new prompt also does."""
        self.start_sample([], None)

    def budget(self, prompt_len: int) -> policy.Budget:
        """The budget for a prompt of this length; raises BudgetError with a fix if there is none."""
        if prompt_len not in self._budgets:  # checked once per length, not per layer and row
            self._budgets[prompt_len] = self.method.checked_budget(prompt_len, self.config.heavy_ratio,
                                                                   self.config.sinks)
        return self._budgets[prompt_len]

    def next_positions(self, new_tokens: int) -> torch.Tensor:
        """(1, new_tokens) the positions the next tokens take, as the model counts them with a full cache."""
        state = self.layers[min(self.layers)]
        return state.cached[:1, 0] + self.pads[0] + torch.arange(new_tokens, device=state.cached.device)

    # -- the attention call ---------------------------------------------------
    def attend(self, layer_idx: int, query, key, value, mask, scaling, window: refusals.Window | None = None,
               module=None):
        """query (B, heads, q, d); key (B, kv_heads, kv, d); value (B, kv_heads, kv, dv) -> (B, q, heads, dv).

        A layer's ``window`` (sliding, or chunks) is refused once the longest row outgrows it. ``module``:
        the attention module, for methods that read its weights.
        """
        q_len, kv_len = query.shape[2], key.shape[2]
        if q_len == kv_len:  # the cache was empty: a prompt
            refusals.check_called_once(layer_idx, self.attended)
            refusals.check_window(layer_idx, window, kv_len)
            if mask is not None and mask.is_floating_point():
                refusals.check_additive_mask(layer_idx, mask, torch.finfo(mask.dtype).min)
            return self._attend_prompt(layer_idx, module, query, key, value, mask, scaling)
        state = self.layers.get(layer_idx)
        refusals.check_decode_step(q_len, kv_len, state is not None and state.cached.shape[0] == query.shape[0])
        if layer_idx == next(iter(self.layers)):  # once per step, for every layer: the layers share ``cached``
            state.cached += 1  # the tokens each row has seen, the incoming one included
        if window is not None:  # windowed models only: one host sync per layer and step
            refusals.check_window(layer_idx, window, int(state.cached.max()))
        if state.scores is None:  # a method that prunes only the prompt
            return self._decode_kept(state, query, key, value, scaling)
        return self._decode(state, query, key, value, scaling)

    def _decode_kept(self, state: Slots, query, key, value, scaling):
        """A decode step of a method that pruned only the prompt: the model's own attention over what it kept."""
        self.backend.open_slot(state, None)
        return attention_math.model_decode_step(query, key, value, state.bias, scaling)

    def _decode(self, state: Slots, query, key, value, scaling):
        """One decode step of every row at once: attend, score, decide, in a fixed number of tensor ops."""
        method = self.method
        norms = entry = None
        if method.uses_values:
            incoming = self.backend.incoming_values(state, value).to(state.scores.dtype)
            norms = method.new_norms(incoming, state.value_weight).to(state.scores.dtype)
            entry = method.entry_scores(norms)
        self.backend.open_slot(state, norms, entry)
        step = None
        if method.scores.is_attention:
            cache = self.backend.operands(state, key, value)
            out, probs = attention_math.decode_step(query, cache, scaling, state.scores.dtype)
            step = probs[:, :, 0] if probs.shape[2] == 1 else probs.mean(dim=2)  # (B, kv_heads, C): GQA group mean
        else:
            out = attention_math.model_decode_step(query, key, value, state.attended[:, :, None, :], scaling)
        scores = method.step_scores(state.scores, step, state.norms)
        victim, leaves = policy.step_victim(scores, state.positions, state.attended, state.cached, state.limits)
        self.backend.close_step(state, scores, victim, leaves)
        return out

    def _attend_prompt(self, layer_idx, module, query, key, value, mask, scaling):
        """Score each row's prompt alone, then decide for the whole batch at once."""
        batch, kv_heads, width = key.shape[:3]
        pads = self.pads if len(self.pads) == batch else [0] * batch  # none when called without the pre-hook
        score_dtype = self.config.resolved_score_dtype(query.dtype)
        budgets = [self._budget(layer_idx, width - pad) for pad in pads]
        limits = self._limits_of(budgets, key.device)
        masks = [None] * batch if mask is None else self._own_masks(mask, pads)
        scores = query.new_full((batch, kv_heads, width), float("-inf"), dtype=score_dtype)
        norms = scores.new_zeros(scores.shape) if self.method.uses_values else None
        if batch == 1 and pads[0] == 0:  # the paper's case, as it computes it
            out = self._score_row(layer_idx, module, 0, query, key, value, masks[0], scaling, scores, norms,
                                  budgets[0])
        else:
            out = query.new_zeros(batch, width, query.shape[1], value.shape[3])  # padding rows stay 0
            for b, pad in enumerate(pads):  # each row alone: its own tokens under its own mask
                rows = slice(b, b + 1), slice(None), slice(pad, None)
                out[b:b + 1, pad:] = self._score_row(layer_idx, module, b, query[rows], key[rows], value[rows],
                                                     masks[b], scaling, scores, norms, budgets[b])
        pad = torch.tensor(pads, device=key.device).view(-1, 1, 1)
        positions = (torch.arange(width, device=key.device) - pad).clamp_(min=policy.NO_POSITION)  # (B, 1, W)
        if not self.layers:  # every layer shares one count of the tokens each row has seen
            self._cached = width - pad
        cached = self._cached
        attended = (positions >= 0).expand(batch, kv_heads, width)
        if self.config.adakv:
            heavy = adakv.head_budgets(scores, positions, attended, cached, limits)
            limits = policy.Limits.of(budgets, key.device, self.config.sinks, heavy=heavy)
        keep = policy.keep_slots(scores, positions, attended, cached, limits)
        slots = Slots(policy.drop_pruned(scores, keep), norms, positions, attended, cached, budgets, limits)
        if self.method.uses_values:  # what a decode step's value term reads of the layer (o_proj for wo_l1)
            slots.value_weight = self.method.norm_weight(module, kv_heads, value.shape[3])
        self.layers[layer_idx] = self.backend.after_prompt(layer_idx, slots, keep, self.cache, self.method)
        return out

    def _score_row(self, layer_idx, module, row, query, key, value, mask, scaling, scores, norms, budget):
        """One row's prompt: query (1, heads, L, d) -> output (1, L, heads, dv); writes the row's scores (and norms)
        into ``scores[row]`` (``norms[row]``), whose last L slots are its tokens."""
        score_dtype = scores.dtype
        if self.method.scores.is_attention:
            out, attention = self._prefill(query, key, value, mask, scaling, self.method.window, score_dtype)
        else:
            out, attention = attention_math.model_prefill(query, key, value, mask, scaling), None
        prompt = Prompt(key, value, module, layer_idx, attention, self.config.sinks, score_dtype, budget)
        length = key.shape[2]
        scores[row, :, -length:] = self.method.prompt_scores(prompt)
        if norms is not None:
            norms[row, :, -length:] = self.method.token_norms(prompt)
        return out

    def _limits_of(self, budgets: list[policy.Budget], device) -> policy.Limits:
        """The rows' budgets as tensors, made once per prompt (per layer only where the budgets differ by layer)."""
        key = tuple(budgets)
        if key not in self._limits:
            self._limits[key] = policy.Limits.of(budgets, device, self.config.sinks)
        return self._limits[key]

    def _budget(self, layer_idx: int, prompt_len: int) -> policy.Budget:
        """The row's budget at this layer, once its budget is known to work (else a BudgetError)."""
        self.budget(prompt_len)
        budget = self.method.layer_budget(prompt_len, self.config.heavy_ratio, self.config.sinks, layer_idx,
                                          self.num_layers)
        if budget.keeps_all and layer_idx == 0:
            warnings.warn(f"heavy_ratio {self.config.heavy_ratio} gives a recent budget of 0 for a "
                          f"{prompt_len}-token prompt: nothing is pruned (as in the paper's code)", stacklevel=5)
        return budget

    def _own_masks(self, mask, pads: list[int]) -> list:
        """Each row's own prompt mask (:func:`attention_math.row_mask`), worked out once per mask: layers share the model's."""
        if self._row_masks is None or self._row_masks[0] is not mask:  # held, so a new mask is a new object
            self._row_masks = mask, [attention_math.row_mask(mask, b, pad) for b, pad in enumerate(pads)]
        return self._row_masks[1]

    def _chunked_prefill(self, query, key, value, mask, scaling, window, score_dtype):
        return attention_math.chunked_prefill(query, key, value, mask, scaling, window, self.config.chunk_size, score_dtype)

    def _window_prefill(self, query, key, value, mask, scaling, window, score_dtype):
        if window is None:  # every query is scored: chunked computes the output with the probabilities
            return self._chunked_prefill(query, key, value, mask, scaling, window, score_dtype)
        return attention_math.window_prefill(query, key, value, mask, scaling, window, score_dtype)


def _load_fused_prefill():
    """The Triton scoring, imported only when asked for (triton is optional)."""
    try:
        from .fused import fused_prefill
    except ImportError as err:
        raise ImportError(f"scoring='fused' needs triton ({err}); pip install triton, "
                          "or use scoring='chunked'") from err
    return fused_prefill
