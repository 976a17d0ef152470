"""The ``paged|vatp`` attention function: one step of the engine's packed batch, as the session's method prunes it.

transformers' continuous batching calls it once per layer and step with the step's tokens packed into one
sequence (query (1, heads, tokens, d), key and value (1, kv_heads, tokens, d), RoPE applied) and its paged cache
(``cache``, ``read_index``, ``write_index``); no mask is built for a custom attention name. It follows the step's
plan (:class:`~vatp.engine.requests.StepPlan`):

* each prompt chunk attends its request's cache and itself causally, in eager's arithmetic (as the evict
  backend's chunked scoring), and adds the attention its method's window of queries pays each key to the
  request's sums; at the prompt's last chunk the method scores the prompt, the policy decides, and each KV head's
  kept tokens are copied, oldest first, into the request's first slots (the state of a deciding request's slots
  goes beside them, :class:`~vatp.engine.pages.PageState`);
* the decode steps of deciding requests, batched (no loop over requests): each writes its token into the slot
  its request opened for it, attends its slots, scores, and the policy says which slot leaves; that slot is
  opened for the request's next token;
* the decode steps of the others, batched: the model's own SDPA over their slots.
"""
from __future__ import annotations

import torch

from .. import attention_math, policy
from ..methods import Prompt
from .pages import PageState, slot_pages


def paged_vatp_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-interface entry point under continuous batching (registered as ``paged|vatp``)."""
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    return StepAttention(module._vatp_session.engine, module, scaling, kwargs)(query, key, value), None


class StepAttention:
    """One layer's attention for one step; made by the engine with the step's plan and the layer's cache."""

    def __init__(self, engine, module, scaling, kwargs):
        self.engine, self.module, self.scaling = engine, module, scaling
        self.session, self.plan = engine.session, engine.plan
        self.layer = module.layer_idx
        cache = kwargs["cache"]
        group, in_group = cache.layer_index_to_group_indices[self.layer]
        self.cache = cache
        self.keys, self.values = cache.key_cache[in_group], cache.value_cache[in_group]
        self.read_index, self.write_index = kwargs["read_index"][group], kwargs["write_index"][group]

    def __call__(self, query, key, value):
        """query (1, heads, T, d), key (1, kv_heads, T, d), value (1, kv_heads, T, dv) -> (1, T, heads, dv)."""
        new_keys, new_values = key[0].transpose(0, 1), value[0].transpose(0, 1)  # (T, kv_heads, d)
        writes = self.write_index
        if self.plan.pruned:  # their tokens go into the slots their requests opened for them, per KV head
            writes = writes.index_fill(0, self.plan.tensors["pruned"]["rows"], self.cache.write_trash_index)
        self.keys.index_copy_(0, writes, new_keys)
        self.values.index_copy_(0, writes, new_values)
        out = query.new_zeros(1, query.shape[2], query.shape[1], value.shape[3])
        for segment in self.plan.prefill:
            start, stop = segment.query
            out[:, start:stop] = self._prompt_chunk(segment, query[:, :, start:stop], key[:, :, start:stop],
                                                    value[:, :, start:stop])
        for kind, decode in (("pruned", self._decode_pruned), ("plain", self._decode_plain)):
            if kind in self.plan.tensors:
                step = self.plan.tensors[kind]
                rows = step["rows"]
                out[0, rows] = decode(step, query[0, :, rows].transpose(0, 1)[:, :, None], new_keys[rows],
                                      new_values[rows])[:, 0]
        return out

    def _pages(self, step: dict):
        """(R, width) pages of each decode request's slots, padded with the read trash, and which are its: made at
        the step's first layer (``read_index`` is the same for every layer)."""
        if "pages" not in step:
            step["pages"] = slot_pages(self.read_index, step["starts"], step["slots"], step["width"],
                                       self.cache.read_trash_index)
        return step["pages"]

    # -- prompts --------------------------------------------------------------------------------------------------
    def _prompt_chunk(self, segment, query, key, value):
        """A chunk of a request's prompt: its attention output (1, q, heads, dv); its window's attention added to the
        request's sums; at the prompt's end, the decision and the compaction."""
        tracked, method = segment.tracked, self.session.method
        pages = self.read_index[segment.keys[0]:segment.keys[1]] if segment.past else None
        if pages is not None:  # the request's cache, this chunk included (written above)
            key, value = self.keys[pages].transpose(0, 1)[None], self.values[pages].transpose(0, 1)[None]
        score_dtype = self.session.config.resolved_score_dtype(query.dtype)
        if method.scores.is_attention:
            scored = self._scored_rows(tracked.prompt_len, segment.past, query.shape[2], method.window)
            out, sums = attention_math.chunked_prefill(query, key, value, None, self.scaling, scored,
                                                       self.session.config.chunk_size, score_dtype, accumulate=True)
            previous = tracked.sums.get(self.layer)
            if previous is not None:
                sums[:, :previous.shape[1]] += previous
            tracked.sums[self.layer] = sums
        else:
            out = attention_math.model_prefill(query, key, value, None, self.scaling)
        if segment.ends_prompt and tracked.budget is not None:
            if pages is None:
                pages = self.write_index[segment.query[0]:segment.query[1]]
            self._end_prompt(tracked, key, value, pages, score_dtype)
        return out

    @staticmethod
    def _scored_rows(prompt_len: int, past: int, rows: int, window: int | None) -> int | None:
        """How many of a chunk's last query rows the method's window holds (None: every row)."""
        if window is None:
            return None
        return max(rows - max(prompt_len - window - past, 0), 0)

    def _end_prompt(self, tracked, key, value, pages, score_dtype) -> None:
        """The prompt's decision at this layer, and each KV head's kept tokens copied, oldest first, into the request's
        first slots; a deciding request's state beside them."""
        session, method, layer = self.session, self.session.method, self.layer
        config, length = session.config, tracked.prompt_len
        budget = method.layer_budget(length, config.heavy_ratio, config.sinks, layer, session.num_layers)
        attention = tracked.sums.pop(layer).to(score_dtype) if method.scores.is_attention else None
        prompt = Prompt(key=key, value=value, module=self.module, layer_idx=layer, attention=attention,
                        sink_len=config.sinks, score_dtype=score_dtype, budget=budget)
        scores = method.prompt_scores(prompt)[None]  # (1, kv_heads, L)
        positions = torch.arange(length, device=key.device)[None, None]
        keep = policy.keep_slots(scores, positions, torch.ones_like(scores, dtype=torch.bool),
                                 torch.tensor([[[length]]], device=key.device),
                                 policy.Limits.of([budget], key.device, config.sinks))[0]  # (kv_heads, L)
        kept = int(keep.sum(dim=-1).max())  # one host sync per layer and prompt, as the evict backend's
        take = keep.to(torch.uint8).sort(dim=-1, descending=True, stable=True).indices[:, :kept]  # oldest first
        heads = torch.arange(take.shape[0], device=key.device)[:, None]
        target = pages[:kept].expand_as(take)
        self.keys[target, heads] = self.keys[pages[take], heads]
        self.values[target, heads] = self.values[pages[take], heads]
        tracked.kept.append(kept)
        tracked.held = max(tracked.kept)
        if tracked.kind == "decides":
            state = {"scores": scores.gather(-1, take[None]), "positions": take[None],
                     "attended": torch.ones_like(take[None], dtype=torch.bool)}
            if method.uses_values:
                state["norms"] = method.token_norms(prompt)[None].gather(-1, take[None])
            self._page_state(score_dtype).write(pages[None, :kept], heads[None], state)

    def _page_state(self, score_dtype) -> PageState:
        state = self.engine.pages.get(self.layer)
        if state is None or state.positions.shape[0] != self.keys.shape[0]:  # first use, or another cache
            self.engine.pages[self.layer] = PageState.empty(self.keys.shape[0], self.keys.shape[1], score_dtype,
                                                            self.session.method.uses_values, self.keys.device)
        return self.engine.pages[self.layer]

    # -- decode steps -----------------------------------------------------------------------------------------
    def _decode_pruned(self, step: dict, query, new_keys, new_values):
        """query (D, heads, 1, d), new_keys and new_values (D, kv_heads, d): a decode step of every deciding request
        at once -> (D, 1, heads, dv)."""
        method = self.session.method
        pages, valid = self._pages(step)
        held, cached = step["held"], step["cached"]
        score_dtype = self.session.config.resolved_score_dtype(query.dtype)
        store = self._page_state(score_dtype)
        state = store.read(pages)
        valid = valid[:, None, :]
        heads = torch.arange(new_keys.shape[1], device=pages.device)[None, :, None]
        # The incoming token's slot: the one the last step opened for it (its position), else the first unused.
        opened = (state["positions"] == cached - 1) & valid
        free = torch.where(opened.any(dim=-1, keepdim=True), opened.int().argmax(dim=-1, keepdim=True), held)
        target = pages.gather(1, free[..., 0])  # (D, kv_heads)
        self.keys[target, heads[..., 0]] = new_keys
        self.values[target, heads[..., 0]] = new_values
        attended = (state["attended"] & valid).scatter(-1, free, True)
        positions = state["positions"].scatter(-1, free, cached.expand_as(free) - 1)
        norms, entry = None, 0.0
        if method.uses_values:
            weight = method.norm_weight(self.module, new_values.shape[1], new_values.shape[2])
            new_norms = method.new_norms(new_values.to(score_dtype)[:, :, None], weight).to(score_dtype)
            norms = state["norms"].scatter(-1, free, new_norms)
            entry = method.entry_scores(new_norms)
            entry = 0.0 if entry is None else entry
        scores = state["scores"].masked_fill(~attended, float("-inf")).scatter(-1, free, entry)
        keys, values = self.keys[pages].transpose(1, 2), self.values[pages].transpose(1, 2)
        cache = attention_math.DecodeOperands.of(keys, values, attended)
        out, probs = attention_math.decode_step(query, cache, self.scaling, score_dtype)
        scores = method.step_scores(scores, probs[:, :, 0] if probs.shape[2] == 1 else probs.mean(dim=2), norms)
        victim, leaves = policy.step_victim(scores, positions, attended, cached, step["limits"])
        # The slot that leaves is the next token's: opened (score 0, its position) in the rows that prune.
        scores = scores.scatter(-1, victim, torch.where(leaves, 0.0, scores.gather(-1, victim)))
        positions = positions.scatter(-1, victim, torch.where(leaves, cached, positions.gather(-1, victim)))
        state = {"scores": scores, "positions": positions, "attended": attended}
        if norms is not None:
            state["norms"] = norms
        store.write(pages, heads, state)
        return out

    def _decode_plain(self, step: dict, query, new_keys, new_values):
        """query (P, heads, 1, d): a decode step of the requests that decide nothing while decoding (their token,
        written by the engine, in a slot after the others) -> (P, 1, heads, dv), the model's own SDPA."""
        pages, valid = self._pages(step)
        keys, values = self.keys[pages].transpose(1, 2), self.values[pages].transpose(1, 2)
        slot = torch.arange(pages.shape[1], device=pages.device)
        # A layer that kept fewer of the prompt than another (PyramidKV) leaves its spare slots unattended.
        mask = valid & ((slot < step["kept"][:, self.layer, None]) | (slot >= step["since"][:, None]))
        return attention_math.model_decode_step(query, keys, values, mask[:, None, None, :], self.scaling)
