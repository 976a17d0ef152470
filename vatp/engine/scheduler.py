"""vatp's schedulers: transformers' own, with the bookkeeping that pruning needs around each step.

transformers picks a scheduler by name from ``SCHEDULER_MAPPING`` (``ContinuousBatchingConfig.scheduler_type``);
vatp registers one per engine and kind ("fifo", "prefill_first") and removes them when disabled. Around the
scheduling that transformers does:

* before it, the last step is applied (:meth:`Engine.before_step`): a request whose prompt ended holds fewer
  slots (its ``position_offset`` is set to them and its trailing blocks are returned to the block manager), and
  a deciding request's count stays at its budget;
* only the waiting requests the pool can hold to their end are candidates (:meth:`Engine.admissible`), so the
  engine never has to soft-reset one, which would re-prefill the pruned tokens;
* after it, the step is planned for the attention function and the decoder's pre-hook (:meth:`Engine.plan_step`).

A request vatp cannot serve is refused when it is queued (:meth:`Engine.admit` raises, and transformers fails that
request alone).
"""
from __future__ import annotations

from transformers.generation.continuous_batching.scheduler import (SCHEDULER_MAPPING, FIFOScheduler,
                                                                   PrefillFirstScheduler)

KINDS = {"fifo": FIFOScheduler, "prefill_first": PrefillFirstScheduler}


class PruningScheduling:
    """Mixed in front of one of transformers' schedulers; ``engine`` is set on the class made for each engine."""

    engine = None

    def add_waiting_request(self, state) -> None:
        if self.engine.admit(state, self.cache):
            super().add_waiting_request(state)

    def schedule_batch(self, token_budget: int, cache_budget: int):
        self.engine.before_step(self)
        batch, *rest = super().schedule_batch(token_budget, cache_budget)
        if batch:  # None: the cache is full (transformers then offloads); []: nothing to run
            self.engine.plan_step(batch)
        return (batch, *rest)

    def _get_waiting_candidates(self):
        return self.engine.admissible(self, super()._get_waiting_candidates())


def register(engine) -> dict[str, str]:
    """Register vatp's schedulers for ``engine``: {transformers' kind: the name to put in ``scheduler_type``}."""
    names = {}
    for kind, base in KINDS.items():
        name = f"vatp-{kind}-{id(engine):x}"
        SCHEDULER_MAPPING[name] = type(f"Pruning{base.__name__}", (PruningScheduling, base), {"engine": engine})
        names[kind] = name
    return names


def unregister(names: dict[str, str]) -> None:
    for name in names.values():
        SCHEDULER_MAPPING.pop(name, None)
