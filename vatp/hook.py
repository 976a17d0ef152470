"""Switch VATP on and off in a transformers model, leaving no trace when off.

The hook is transformers' own attention interface: VATP registers an
attention function under the name ``"vatp"`` and points the model's
``config._attn_implementation`` at it. Nothing in transformers is forked or
monkey-patched. :func:`disable` restores the previous implementation and
removes every attribute and hook that :func:`enable` added.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import replace

from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import engine, refusals
from .config import VatpConfig
from .names import paper_method
from .session import VatpSession

ATTN_NAME = "vatp"
_SESSION_ATTR = "_vatp_session"
_STATE_ATTR = "_vatp_patch"


def vatp_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           sliding_window=None, **kwargs):
    """transformers attention-interface entry point: delegate to the module's session.

    Keywords vatp does not implement (softcap, s_aux, ...) are refused, not dropped, and so is
    bidirectional attention.
    """
    refusals.check_attention_arguments(module.layer_idx, dropout, kwargs)
    causal = kwargs.get("is_causal")
    refusals.check_causal(module.layer_idx, getattr(module, "is_causal", True) if causal is None else causal)
    session: VatpSession = getattr(module, _SESSION_ATTR)
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    window = refusals.layer_window(module.config, module.layer_idx, sliding_window)
    out = session.attend(module.layer_idx, query, key, value, attention_mask, scaling, window, module)
    # transformers' own attention functions return a contiguous output, and some models .view() it (AFMoE).
    return out.contiguous(), None


def vatp_mask(*args, q_offset=0, **kwargs):
    """The mask the model hands vatp: SDPA's boolean mask at a prompt, or None for a plain causal one (so no
    L x L mask is built); none at all at a decode step (a cache that holds tokens), where vatp attends the
    slots its state says and would throw the mask away."""
    if q_offset:
        return None
    return sdpa_mask(*args, q_offset=q_offset, **kwargs)


AttentionInterface.register(ATTN_NAME, vatp_attention_forward)
AttentionMaskInterface.register(ATTN_NAME, vatp_mask)


def _attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]


def enable(model, config: VatpConfig | None = None, **settings) -> VatpSession:
    """Turn VATP on for ``model`` (any Llama-family transformers model) and return its session.

    ``settings`` are :class:`VatpConfig` fields, or ``h2o=True/False`` as the
    paper's flag. Enabling an enabled model replaces its settings.
    """
    if "h2o" in settings:
        settings["method"] = _paper_method(settings.pop("h2o"), settings.get("method"))
    config = replace(config or VatpConfig(), **settings)
    modules = _attention_modules(model)
    if not modules:
        raise refusals.UnsupportedError(
            f"{type(model).__name__} has no attention layers that use transformers' attention interface; "
            "vatp supports Llama-family models (Llama, Mistral, Qwen2, SmolLM2, ...)"
        )
    if not getattr(model, "_supports_default_dynamic_cache", lambda: True)():  # generate's own test
        raise refusals.UnsupportedError(f"{type(model).__name__} keeps a cache of its own (not a DynamicCache, e.g. "
                                       "MiniMax's linear-attention state), which vatp does not prune; use a model "
                                       "whose generate makes a DynamicCache")
    if getattr(model.config, "output_attentions", False):
        _warn_no_attentions()
    disable(model)
    session = VatpSession(config, num_layers=len(modules))
    previous = model.config._attn_implementation
    for module in modules:
        setattr(module, _SESSION_ATTR, session)
    model.set_attn_implementation(ATTN_NAME)
    decoder = model.get_decoder()
    layers = [module.layer_idx for module in modules]
    before, after = _before_forward(session, decoder, layers)
    hooks = [decoder.register_forward_pre_hook(before, with_kwargs=True),
             decoder.register_forward_hook(after, with_kwargs=True)]
    detach_engine = engine.attach(model, session, len(modules))
    setattr(model, _STATE_ATTR, (session, previous, hooks, modules, detach_engine))
    return session


def disable(model) -> None:
    """Turn VATP off: the model is exactly as before :func:`enable`. A no-op if it is off."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        return
    session, previous, hooks, modules, detach_engine = state
    detach_engine()
    for hook in hooks:
        hook.remove()
    for module in modules:
        delattr(module, _SESSION_ATTR)
    model.set_attn_implementation(previous)
    delattr(model, _STATE_ATTR)
    session.reset()


def session_of(model) -> VatpSession | None:
    """The active session of ``model``, or None when VATP is off."""
    state = getattr(model, _STATE_ATTR, None)
    return state[0] if state else None


@contextmanager
def enabled(model, config: VatpConfig | None = None, **settings):
    """``with vatp.enabled(model, heavy_ratio=0.25, apval=True) as session: ...``"""
    session = enable(model, config, **settings)
    try:
        yield session
    finally:
        disable(model)


def _paper_method(h2o, method) -> str:
    """The method the paper's flag ``h2o`` picks; refused beside ``method``, as pred.py refuses ``--h2o --method``."""
    if not isinstance(h2o, bool):
        raise ValueError(f"h2o must be a bool (True: H2O, False: the paper's Scissorhands), got {h2o!r}")
    if method is not None:
        raise ValueError(f"h2o={h2o} picks {paper_method(h2o)} but method={method!r} says otherwise; give one of them")
    return paper_method(h2o)


def _warn_no_attentions() -> None:
    warnings.warn("output_attentions is set, but vatp returns no attention weights (outputs.attentions stays "
                  "empty); to read them, run the model without vatp (vatp.disable) with eager attention", stacklevel=3)


def _before_forward(session: VatpSession, decoder, layers: list[int]):
    """Decoder pre-hook: start a sample at each prompt; for the evict backend, supply true positions.

    At a prompt (an empty cache): padding other than on the left is refused, and so are a forward
    without a cache, a cache other than a DynamicCache, beam search and assisted decoding (the
    sample's cache gets a ``reorder_cache`` and a ``crop`` that refuse); if the caller passed no
    cache, one is made (the model would make its own, out of our reach), and the session starts
    the sample with each row's padding and that cache. A decode step must continue that cache
    (not one filled with vatp off, nor a copy); for the evict backend without explicit positions,
    it supplies the true ones (the model would derive them from the shrunken cache; ``generate``
    passes them, from the attention mask).
    """
    def hook(module, args, kwargs):
        if kwargs.get("cu_seq_lens_q") is not None:  # a step of transformers' continuous batching (vatp/engine)
            kwargs["position_ids"] = session.engine.position_ids(kwargs["position_ids"])
            return args, kwargs
        inputs = kwargs.get("input_ids", args[0] if args else None)
        inputs = inputs if inputs is not None else kwargs.get("inputs_embeds")
        if inputs is None:
            return args, kwargs  # the model refuses this call itself
        use_cache = kwargs.get("use_cache")
        refusals.check_cache_in_use(decoder.config.use_cache if use_cache is None else use_cache)
        cache = kwargs.get("past_key_values")
        if cache is not None and type(cache) is not DynamicCache:
            raise refusals.UnsupportedError(f"vatp prunes a DynamicCache, not a {type(cache).__name__}; pass no "
                                           "past_key_values (and no cache_implementation) to let the model make one")
        if cache is None or cache.get_seq_length() == 0:  # a prompt: a new sample
            if kwargs.get("output_attentions"):
                _warn_no_attentions()
            if cache is None:
                cache = kwargs["past_key_values"] = DynamicCache(config=decoder.config)
            cache.reorder_cache, cache.crop = refusals.refuse_reordering, refusals.refuse_cropping
            session.start_sample(refusals.left_padding(kwargs.get("attention_mask")) or [0] * inputs.shape[0], cache)
            return args, kwargs
        refusals.check_own_cache(cache is session.cache)
        if session.config.backend == "evict" and kwargs.get("position_ids") is None:
            kwargs["position_ids"] = session.next_positions(inputs.shape[1])
        return args, kwargs

    def after(module, args, kwargs, output):
        if session.attended:  # the prompt's forward: each layer went through vatp once
            refusals.check_every_layer(session.attended, layers)
            session.attended.clear()

    return hook, after
