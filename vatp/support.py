"""What vatp handles, and a clear refusal of everything else before it can skew a result.

vatp computes each layer's attention itself to score the keys, so an
attention feature it does not implement (a sliding window, logit softcapping,
learned attention sinks, dropout, right padding) would make the scores, and so the
kept tokens, silently differ from the model's own attention. Each check
below raises :class:`UnsupportedError` naming the fix instead. They run at
the prompt's forward, before the first token is generated.

This module imports no torch, so that pred.py can catch its error cheaply.
"""
from __future__ import annotations

# Attention-interface keywords that leave the attention itself unchanged.
PASSIVE_KWARGS = frozenset({"position_ids", "cache_position", "use_cache", "output_attentions",
                            "output_router_logits", "past_key_values", "is_causal"})


class UnsupportedError(ValueError):
    """The model or input uses something vatp does not implement; the message says what to do."""


def check_attention_arguments(layer_idx: int, dropout: float, kwargs: dict) -> None:
    """Refuse attention keywords whose effect vatp's scoring does not reproduce."""
    if dropout:
        raise UnsupportedError(f"layer {layer_idx} applies attention dropout {dropout}: vatp prunes at "
                               "inference only; call model.eval() first")
    for name, value in kwargs.items():
        if value is None or name in PASSIVE_KWARGS:
            continue
        if name == "softcap":
            raise UnsupportedError(f"layer {layer_idx} caps its attention logits (softcap={value}, e.g. Gemma-2): "
                                   "vatp does not implement softcapping, so its scores would not be the model's "
                                   "attention; use a model without attn_logit_softcapping")
        if name == "s_aux":
            raise UnsupportedError(f"layer {layer_idx} has learned attention sinks (s_aux, e.g. gpt-oss) that take "
                                   "part in the softmax: vatp does not implement them, so its scores would not be "
                                   "the model's attention; use a model without them")
        raise UnsupportedError(f"layer {layer_idx} passes the attention argument {name}={_short(value)}, which vatp "
                               "does not implement, so its scores might not be the model's attention; use a "
                               "Llama-family model (Llama, Mistral, Qwen2, SmolLM2, ...) or report the model")


def check_window(layer_idx: int, window: int | None, length: int) -> None:
    """Refuse a sliding window shorter than the sequence: the layer would not see what vatp scores."""
    if window is not None and length > window:
        raise UnsupportedError(
            f"layer {layer_idx} attends a sliding window of {window} tokens, shorter than this sequence "
            f"({length} tokens): vatp scores full attention, so its scores would not be the model's; keep "
            f"prompt + generated tokens <= {window} (a lower model2maxlen or max_new_tokens) or use a model "
            "without a sliding window")


def left_padding(attention_mask) -> list[int]:
    """Per row, how many padding tokens (zeros of a 2-D ``attention_mask`` (batch, length)) precede the prompt.

    Each row's zeros must be a prefix (left padding, as ``generate`` needs); others are refused.
    """
    if attention_mask is None or attention_mask.dim() != 2:
        return []
    real = attention_mask.bool()
    pads = (~real).int().cumprod(dim=1).sum(dim=1)  # leading zeros per row
    if int(real.sum()) != int((real.shape[1] - pads).sum()):
        raise UnsupportedError("attention_mask has zeros after a row's first token (right padding or holes): vatp "
                               "prunes left-padded batches only; set tokenizer.padding_side = 'left'")
    if bool((pads == real.shape[1]).any()):
        raise UnsupportedError("a row of attention_mask is all zeros: every prompt needs at least one token")
    return pads.tolist()


def refuse_reordering(*_args, **_kwargs) -> None:
    """A generation cache's ``reorder_cache`` while vatp prunes it: beam search moves rows between steps."""
    raise UnsupportedError("beam search reorders the cache's rows between steps, and vatp's per-row pruning state "
                           "does not follow them; use num_beams=1 (greedy or sampling, as the paper's code)")


def check_every_layer(seen: dict[int, int], layers: list[int]) -> None:
    """After a forward, every attention layer must have gone through vatp, as often as the others.

    ``seen``: layer index -> tokens that layer's vatp state has seen.
    """
    counts = set(seen.values())
    missing = sorted(set(layers) - set(seen))
    if missing or len(counts) > 1:
        behind = missing or sorted(i for i, n in seen.items() if n != max(counts))
        raise UnsupportedError(
            f"layer(s) {behind} did not go through vatp's attention in this forward, so their cache would not "
            "be pruned: their attention bypasses transformers' attention interface (a custom attention module, "
            "or a config that pins another implementation); use a Llama-family model whose layers all use it")


def sliding_window(config) -> int | None:
    """The sliding window some layer of a model config uses, or None (full attention everywhere)."""
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None)
    if window is None or (kinds is not None and "sliding_attention" not in kinds):
        return None
    return int(window)


def _short(value) -> str:
    text = repr(value) if not hasattr(value, "shape") else f"<tensor of shape {tuple(value.shape)}>"
    return text if len(text) < 60 else text[:57] + "..."
