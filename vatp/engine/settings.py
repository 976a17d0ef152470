"""The continuous-batching settings vatp runs under: safe defaults, and refusals of what it cannot follow.

transformers' engine has features that move or share a request's cache behind the attention function's back,
which would make a pruned request's state describe the wrong tokens:

* prefix caching (``allow_block_sharing``) shares blocks between requests by their token ids, which compaction
  rewrites;
* asynchronous batching prepares the next step before the last one is applied;
* CUDA graphs, compiled steps and padded batches replay a captured step without vatp's host-side plan;
* CPU offloading moves a request's blocks, and the state vatp keeps beside them would not follow;
* the flash decode fast path reads a block table vatp does not write;
* forking (``num_return_sequences > 1``) copies a request's blocks but not its pruning state.

:func:`engine_config` makes a config without them; :func:`checked_config` refuses them in a caller's config,
each with the fix, and points the scheduler at vatp's.
"""
from __future__ import annotations

import dataclasses

from transformers import ContinuousBatchingConfig

from ..refusals import UnsupportedError

SAFE = dict(allow_block_sharing=False, use_async_batching=False, use_cuda_graph=False, max_blocks_per_request=0)


def engine_config(**settings) -> ContinuousBatchingConfig:
    """A ``ContinuousBatchingConfig`` with vatp's safe defaults (no block sharing, no async batching, no CUDA graphs,
    no flash decode path) and ``settings`` (``num_blocks``, ``max_batch_tokens``, ``block_size``, ...) on top."""
    return ContinuousBatchingConfig(**{**SAFE, **settings})


def checked_config(config: ContinuousBatchingConfig | None, scheduler: dict[str, str]) -> ContinuousBatchingConfig:
    """The config vatp runs with: ``config`` (None: :func:`engine_config`), copied, its scheduler type replaced by
    vatp's of the same kind (``scheduler`` maps one to the other); anything vatp cannot follow is refused."""
    config = engine_config() if config is None else dataclasses.replace(config)
    refused = []
    if config.allow_block_sharing:
        refused.append("allow_block_sharing=True (prefix caching shares blocks by token ids, and pruning compacts "
                       "them): pass allow_block_sharing=False")
    if config.use_async_batching:
        refused.append("use_async_batching=True (the next step would be prepared before vatp applies the last): "
                       "pass use_async_batching=False")
    if any(config.cuda_graph_booleans) or config.q_padding_interval_size or config.kv_padding_interval_size:
        refused.append("CUDA graphs or padded batches (a replayed step skips vatp's plan): pass use_cuda_graph=False "
                       "and no padding interval")
    if config.varlen_compile_config or config.decode_compile_config or config.default_compile_level:
        refused.append("a compiled step (it would skip vatp's plan): pass no compile config and "
                       "default_compile_level=0")
    if config.cpu_offload_space:
        refused.append("cpu_offload_space (offloading moves a request's blocks, and its pruning state would not "
                       "follow): pass cpu_offload_space=0")
    if config.max_blocks_per_request:
        refused.append("max_blocks_per_request > 0 (the flash decode path reads a block table vatp does not write): "
                       "pass max_blocks_per_request=0")
    if config.scheduler_type not in scheduler:
        refused.append(f"scheduler_type={config.scheduler_type!r}: vatp prunes under {', '.join(scheduler)}")
    if refused:
        raise UnsupportedError("vatp cannot prune under this continuous-batching config: " + "; ".join(refused)
                               + " (vatp.engine_config(...) makes one with the safe settings)")
    config.scheduler_type = scheduler[config.scheduler_type]
    config.max_blocks_per_request = 0  # resolved by transformers otherwise; 0: no flash decode path
    return config
