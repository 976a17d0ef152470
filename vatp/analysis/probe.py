"""Look inside one attention layer on one prompt: probabilities, value norms, kept tokens.

Shared by ``visual.ipynb`` and ``python -m vatp.analysis.figures``. Every function runs
the model only up to the chosen layer's attention (later layers cannot change
it) and stops there, so a look at layer 2 of a 30-layer model costs a tenth
of a forward. The model must not be VATP-enabled; each function leaves it as
it found it.

Shapes: ``input_ids`` (1, L); heads = query heads, kv_heads = key/value heads.
Query head ``h`` reads KV head ``h // (heads // kv_heads)`` (see :func:`kv_head_of`).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .. import hook, policy


class _Stop(Exception):
    """Raised by a hook to end the forward once the layer of interest has run."""


def _attention(model, layer: int):
    layers = model.get_decoder().layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range: the model has {len(layers)} layers (0..{len(layers) - 1})")
    return layers[layer].self_attn


def _check_ids(input_ids: torch.Tensor) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be (1, L), got {tuple(input_ids.shape)}")


@contextmanager
def _stop_after(module):
    """Run ``model(...)`` inside this block: it ends right after ``module``'s forward."""
    def hook(mod, args, output):
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        yield
    except _Stop:
        pass
    finally:
        handle.remove()


def forward_through(model, input_ids: torch.Tensor, layer: int, capture=None, use_cache: bool = False):
    """Run the model on the prompt (1, L) only through ``layer``'s attention, then stop.

    ``capture(attention_module, found)`` may register hooks that fill the
    dict ``found``; they are removed afterwards and ``found`` is returned.
    No cache unless ``use_cache`` (vatp refuses to run without one).
    """
    _check_ids(input_ids)
    attn = _attention(model, layer)
    found: dict = {}
    handles = capture(attn, found) if capture else []
    try:
        with torch.no_grad(), _stop_after(attn):
            model(input_ids.to(model.device), use_cache=use_cache)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _not_enabled(model) -> None:
    if hook.session_of(model) is not None:
        raise ValueError("the model is VATP-enabled: call vatp.disable(model) before inspecting it")


def kv_head_of(model, head: int) -> int:
    """The KV head that query ``head`` reads under GQA (transformers' ``repeat_kv`` layout)."""
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    if not 0 <= head < heads:
        raise ValueError(f"head {head} out of range: the model has {heads} query heads (0..{heads - 1})")
    return head // (heads // kv_heads)


def attention_probs(model, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Softmax attention probabilities of one layer on a prompt: (heads, L, L) float32.

    Runs transformers' eager attention (the one that materialises the
    probabilities) for this call and restores the model's implementation.
    """
    _not_enabled(model)

    def capture(attn, found):
        # LlamaAttention returns (output, weights); eager fills the weights.
        return [attn.register_forward_hook(lambda mod, args, out: found.update(probs=out[1]))]

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        probs = forward_through(model, input_ids, layer, capture)["probs"]
    finally:
        model.set_attn_implementation(previous)
    return probs[0].float().cpu()  # (heads, L, L)


def value_norms(model, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """L1 norm of each prompt token's value vector in one layer: (kv_heads, L) float32.

    Values carry no RoPE, so they are the ``v_proj`` output split into heads;
    the norm is :func:`vatp.policy.value_l1_norm`, the one the method uses.
    """
    _not_enabled(model)

    def capture(attn, found):
        return [attn.v_proj.register_forward_hook(lambda mod, args, out: found.update(values=out))]

    values = forward_through(model, input_ids, layer, capture)["values"]  # (1, L, kv_heads * d)
    kv_heads = model.config.num_key_value_heads
    values = values[0].view(values.shape[1], kv_heads, -1).transpose(0, 1)  # (kv_heads, L, d)
    return policy.value_l1_norm(values).float().cpu()


def kept_tokens(model, input_ids: torch.Tensor, layer: int, **settings) -> torch.Tensor:
    """Which prompt tokens the method keeps after prefill in one layer: (kv_heads, L) bool.

    ``settings`` are :func:`vatp.enable`'s (``heavy_ratio``, ``h2o``,
    ``apval``, ``sink_len``, ...). The method really runs, with the mask
    backend, and the answer is its keep mask without the incoming-token slot.
    """
    _not_enabled(model)
    with hook.enabled(model, backend="mask", **settings) as session:
        forward_through(model, input_ids, layer, use_cache=True)
        keep = session.layers[layer].token_mask()  # (kv_heads, L + 1)
    return keep[:, :-1].cpu()


def encode(tokenizer, text: str) -> torch.Tensor:
    """The prompt as the model reads it: (1, L) token ids (the tokenizer's special tokens included)."""
    return tokenizer(text, return_tensors="pt").input_ids


def token_strings(tokenizer, input_ids: torch.Tensor) -> list[str]:
    """Readable text of each prompt token ((1, L) ids -> L strings)."""
    _check_ids(input_ids)
    return [tokenizer.decode([i]) for i in input_ids[0].tolist()]
