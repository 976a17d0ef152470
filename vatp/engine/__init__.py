"""Pruning inside transformers' continuous batching: ``model.generate_batch`` and ``model.init_continuous_batching``.

After :func:`vatp.enable`, the model's continuous-batching entry points prune with the session's method: each
request's prompt is scored (over however many steps the engine splits it into), decided, and its kept tokens
compacted into its first slots; its trailing blocks go back to the engine's block manager, so a fixed pool holds
more requests at once. A deciding method (H2O, Scissorhands, TOVA, StreamingLLM, ± VATP) then writes each new
token into the slot its request freed; a prompt-only one (SnapKV, KNorm, CriticalKV, PyramidKV) lets the engine
append. Everything is hooked into transformers, nothing forked, and :func:`detach` undoes it:

* an attention function registered as ``paged|vatp`` (``attention.py``);
* schedulers registered in transformers' ``SCHEDULER_MAPPING`` (``scheduler.py``);
* the model's ``init_continuous_batching``, wrapped on the instance: vatp's safe config when the caller passes
  none, refusals of what vatp cannot follow (``settings.py``), and ``paged|vatp`` as the attention;
* the decoder's pre-hook (``vatp/hook.py``) adds each request's logical position to the engine's.

The engine's internals that this relies on are pinned by ``tests/test_engine_pins.py``.
"""
from __future__ import annotations

from transformers import AttentionInterface

from ..refusals import UnsupportedError, model_window
from .attention import paged_vatp_attention
from .engine import Engine
from .scheduler import register, unregister
from .settings import checked_config, engine_config

ATTN_NAME = "paged|vatp"
AttentionInterface.register(ATTN_NAME, paged_vatp_attention)


def attach(model, session, num_layers: int):
    """Give ``session`` an engine and wrap ``model.init_continuous_batching``; returns the function that undoes it.
    A model without continuous batching (a base model, an encoder) gets nothing."""
    if not hasattr(model, "init_continuous_batching"):
        return lambda: None
    engine = session.engine = Engine(session, num_layers, model.device)
    names = register(engine)
    original = model.init_continuous_batching

    def init_continuous_batching(generation_config=None, continuous_batching_config=None, workload_hints=None):
        check_servable(model, session, generation_config or model.generation_config)
        config = checked_config(continuous_batching_config, names)
        engine.reset()
        previous = model.config._attn_implementation
        # Set before transformers' own switch, which would first try a flash attention.
        model.set_attn_implementation(ATTN_NAME)
        try:
            manager = original(generation_config, config, workload_hints)
        except BaseException:
            model.set_attn_implementation(previous)
            raise
        if manager._original_attn_impl is None:  # its stop() then restores vatp's own attention
            manager._original_attn_impl = previous
        engine.manager = manager
        return manager

    model.init_continuous_batching = init_continuous_batching

    def detach() -> None:
        if getattr(model, "_cached_continuous_batching_manager", None) is not None:
            model.destroy_cached_continuous_batching_manager()
        del model.init_continuous_batching
        unregister(names)
        session.engine = None

    return detach


def check_servable(model, session, generation_config) -> None:
    """Refuse, before the engine starts, what vatp cannot prune there; each message names the fix."""
    config = session.config
    if config.adakv:
        raise UnsupportedError("AdaKV gives each KV head its own budget, and the engine holds one number of slots "
                               "per request; drop adakv, or use model.generate with backend='evict'")
    if config.scoring not in (None, "chunked", "eager"):
        raise UnsupportedError(f"the engine scores prompts in eager's arithmetic, chunk by chunk, not with "
                               f"scoring={config.scoring!r}; drop scoring")
    if config.compile is not None:
        raise UnsupportedError("the engine's decode step is not compiled by vatp; drop compile")
    if model_window(model.config) is not None:
        raise UnsupportedError("a model with sliding-window or chunked attention layers keeps a rolling cache in the "
                               "engine, which vatp does not prune; use a model that attends every token")
    if (generation_config.num_return_sequences or 1) > 1:
        raise UnsupportedError("num_return_sequences > 1 forks a request's cache but not its pruning state; generate "
                               "one sequence per request")


__all__ = ["ATTN_NAME", "Engine", "attach", "check_servable", "engine_config"]
