"""The engine side of a vatp session: each request's lifecycle under transformers' continuous batching.

The :class:`Engine` of a session is driven by three hooks, each on the engine's own thread:

* its schedulers (``scheduler.py``): :meth:`admit` when a request is queued, :meth:`admissible`,
  :meth:`before_step` and :meth:`plan_step` around each scheduling;
* the ``paged|vatp`` attention function (``attention.py``), which follows :attr:`plan`;
* the decoder's pre-hook, which adds :meth:`position_deltas` to the engine's ``position_ids``.

The policy (``vatp/policy.py``) and the method decide; this only applies the decisions to the engine's pages.
"""
from __future__ import annotations

import logging

import torch

from ..budget_hint import BudgetError
from ..policy import Budget, Limits
from ..refusals import UnsupportedError
from .requests import Segment, StepPlan, Tracked

log = logging.getLogger("vatp.engine")


class Engine:
    def __init__(self, session, num_layers: int, device):
        self.session = session
        self.num_layers = num_layers
        self.device = device
        self.tracked: dict[str, Tracked] = {}
        self.plan: StepPlan | None = None
        self.manager = None  # the transformers manager it runs under (its output router fails a request alone)
        self.pages: dict[int, object] = {}  # layer -> PageState, made at the first pruned decode step

    def reset(self) -> None:
        """A new engine run (transformers' manager): nothing of the last one is followed."""
        self.tracked, self.plan, self.pages, self.manager = {}, None, {}, None

    # -- admission ---------------------------------------------------------------------------------------------
    def admit(self, state, cache) -> bool:
        """A request is queued: refuse what vatp cannot serve (raise: transformers fails that request alone), or
        fail a soft-reset request alone (its pruned tokens would come back). False: handled here."""
        if state.request_id in self.tracked and self.tracked[state.request_id].state is not state:
            self.manager.output_router.fail_and_deliver(state, UnsupportedError(
                f"request {state.request_id} was evicted by the engine to free memory, and re-running its prompt and "
                "output would bring back the tokens vatp pruned; give the engine more blocks (num_blocks) or fewer "
                "requests at once (max_requests_per_batch)"))
            del self.tracked[state.request_id]
            return False
        if state.num_children:
            raise UnsupportedError("num_return_sequences > 1 forks a request's cache but not its pruning state; "
                                   "generate one sequence per request")
        need = self._peak_blocks(state, cache.block_size)
        if need > cache.num_blocks:
            del self.tracked[state.request_id]
            raise UnsupportedError(f"request {state.request_id} needs {need} blocks of {cache.block_size} tokens at its "
                                   f"peak (a {len(state.initial_tokens)}-token prompt and its new tokens) and the "
                                   f"engine holds {cache.num_blocks}; give it more blocks (num_blocks), or send a "
                                   "shorter prompt or fewer new tokens")
        return True

    def admissible(self, scheduler, candidates: list) -> list:
        """The waiting requests, in order, up to the first that the free blocks cannot hold to its end next to the
        active requests' own ends: admitted requests never need a soft reset."""
        cache, free = scheduler.cache, scheduler.cache.get_num_free_blocks()
        free -= sum(max(self._peak_blocks(state, cache.block_size) - state.allocated_blocks, 0)
                    for state in scheduler.active_requests.values())
        chosen = []
        for state in candidates:
            need = self._peak_blocks(state, cache.block_size) - state.allocated_blocks
            if need > free:
                break
            free -= need
            chosen.append(state)
        return chosen

    def _peak_blocks(self, state, block_size: int) -> int:
        """The most blocks a request can hold from now on (:func:`peak_blocks`)."""
        tracked = self.tracked.get(state.request_id) or self._track(state)
        return peak_blocks(tracked.budget, tracked.decides, tracked.prompt_len, state.max_new_tokens,
                           len(state.generated_tokens), tracked.held, block_size)

    def blocks_needed(self, prompt_len: int, max_new_tokens: int | None, block_size: int) -> int:
        """The most blocks a new request of ``prompt_len`` tokens and ``max_new_tokens`` would hold."""
        budget = self._budget(prompt_len)
        return peak_blocks(budget, self.session.method.scores.decides_while_decoding, prompt_len, max_new_tokens, 0,
                           None, block_size)

    def _budget(self, prompt_len: int, request_id: str | None = None) -> Budget | None:
        """A request's budget, or None where it is kept whole: a prompt too short for the method's budget, or one
        whose recent budget of 0 keeps every token (the paper's quirk)."""
        try:
            budget = self.session.budget(prompt_len)
        except BudgetError as err:
            if request_id is not None:
                log.warning("vatp: request %s is kept whole: %s", request_id, err)
            return None
        if budget.keeps_all:
            if request_id is not None:
                log.warning("vatp: request %s is kept whole: heavy_ratio %s gives a recent budget of 0 for a %d-token "
                            "prompt", request_id, self.session.config.heavy_ratio, prompt_len)
            return None
        return budget

    def _track(self, state) -> Tracked:
        """What vatp follows of a new request: its budget, or none (kept whole)."""
        prompt_len = len(state.initial_tokens)
        tracked = Tracked(state, prompt_len, self._budget(prompt_len, state.request_id),
                          self.session.method.scores.decides_while_decoding)
        self.tracked[state.request_id] = tracked
        return tracked

    # -- around each step ----------------------------------------------------------------------------------------
    def before_step(self, scheduler) -> None:
        """Apply the last step: forget finished requests; a request whose prompt ended holds its kept tokens (its
        trailing blocks go back to the block manager); a deciding request holds its budget at most."""
        alive = scheduler.active_requests.keys() | scheduler.waiting_requests.keys()
        for rid in [rid for rid in self.tracked if rid not in alive]:
            del self.tracked[rid]
        last, self.plan = self.plan, None
        if last is None:
            return
        for segment in last.pruned:
            tracked = segment.tracked
            if tracked.state.request_id in self.tracked:
                tracked.held = min(tracked.held + 1, tracked.budget.total)
        for segment in last.plain:
            segment.tracked.held += 1
        for segment in last.prefill:
            tracked = segment.tracked
            if segment.ends_prompt and tracked.state.request_id in scheduler.active_requests:
                if tracked.held is None:  # kept whole: nothing was compacted
                    tracked.held = tracked.prompt_len
                self._free_trailing_blocks(scheduler.cache, tracked)
        for tracked in self.tracked.values():
            if tracked.held is not None and tracked.state.request_id in scheduler.active_requests:
                tracked.state.position_offset = tracked.position_offset()

    def _free_trailing_blocks(self, cache, tracked: Tracked) -> None:
        """Return the blocks past the request's held slots and the next token's to the block manager."""
        keep = max(1, -(-(tracked.held + 1) // cache.block_size))
        rid, state = tracked.state.request_id, tracked.state
        for manager in cache.group_cache_managers:
            blocks = manager.block_table[rid]
            freed, blocks[keep:] = blocks[keep:], []
            cache._block_manager.free_blocks(freed, shareable=False)
        state.allocated_blocks = min(state.allocated_blocks, keep)

    def plan_step(self, batch: list) -> None:
        """The plan of the step about to run: each scheduled request's segment, in batch order."""
        prefill, pruned, plain, deltas = [], [], [], []
        query = keys = 0
        for future in batch:
            state = future.state
            tracked = self.tracked.get(state.request_id) or self._track(state)
            length, past = future.query_length, state.position_offset
            segment = Segment(tracked, (query, query + length), (keys, keys + past + length), past,
                              future.has_new_token and not state.generated_tokens)
            if tracked.held is None:
                prefill.append(segment)
                deltas += [0] * length
            else:
                (pruned if tracked.kind == "decides" else plain).append(segment)
                deltas.append(tracked.position_delta())
            query, keys = query + length, keys + past + length
        self.plan = StepPlan(prefill, pruned, plain, self._tensor([deltas], torch.int32) if any(deltas) else None)
        if pruned:
            self.plan.tensors["pruned"] = self._decode_tensors(pruned)
        if plain:
            self.plan.tensors["plain"] = self._decode_tensors(plain)

    def _tensor(self, values, dtype=torch.long) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def _decode_tensors(self, segments: list[Segment]) -> dict:
        """The host's knowledge of a step's decode segments, copied to the device once (as the engine copies its
        indices): their query rows, where their pages start in ``read_index``, their slots, tokens seen, budgets
        and, for methods that prune the prompt only, each layer's kept prompt tokens."""
        tracked = [s.tracked for s in segments]
        slots = [t.held + 1 for t in tracked]
        tensors = dict(rows=self._tensor([s.query[0] for s in segments]),
                       starts=self._tensor([s.keys[0] for s in segments]), slots=self._tensor(slots),
                       width=max(slots), held=self._tensor([t.held for t in tracked]).view(-1, 1, 1),
                       cached=self._tensor([t.prompt_len + len(t.state.generated_tokens) for t in tracked]).view(-1, 1, 1))
        if tracked[0].kind == "decides":
            tensors["limits"] = Limits.of([t.budget for t in tracked], self.device, self.session.config.sinks)
        else:
            kept = [t.kept or [t.prompt_len] * self.num_layers for t in tracked]
            tensors["kept"] = self._tensor(kept)  # (P, layers)
            tensors["since"] = self._tensor([max(k) for k in kept])  # the first slot after the kept prompt
        return tensors

    def position_ids(self, position_ids: torch.Tensor) -> torch.Tensor:
        """The engine's ``position_ids`` (1, tokens), made logical: each compacted request's count of the tokens it
        has seen, where the engine counts the slots it holds."""
        if self.plan is None or self.plan.deltas is None:
            return position_ids
        return position_ids + self.plan.deltas.to(position_ids.device)


def peak_blocks(budget: Budget | None, decides: bool, prompt_len: int, max_new_tokens: int | None, generated: int,
                held: int | None, block_size: int) -> int:
    """The most blocks a request can hold from now on: its prompt's while it prefills (``held`` None), then its
    budget's, or every token it will see where they are fewer (deciding methods), or its kept prompt and the new
    tokens left (others; none where there is no limit: such a request is failed alone if the engine ever runs
    out). transformers allocates a block ahead at most."""
    def blocks(slots: int) -> int:
        return (slots + 1) // block_size + 1

    if budget is not None and decides:
        total = budget.total if max_new_tokens is None else min(budget.total, prompt_len + max_new_tokens)
        after = blocks(total + 1)
    else:
        kept = held if held is not None else prompt_len if budget is None else min(prompt_len, budget.total)
        after = blocks(kept + (0 if max_new_tokens is None else max_new_tokens - generated))
    return after if held is not None else max(blocks(prompt_len), after)
