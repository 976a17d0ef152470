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

from typing import NamedTuple

# Attention-interface keywords that leave the attention itself unchanged.
PASSIVE_KWARGS = frozenset({"position_ids", "cache_position", "use_cache", "output_attentions",
                            "output_router_logits", "past_key_values", "is_causal", "logits_to_keep"})


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


def check_causal(layer_idx: int, is_causal: bool | None) -> None:
    """Refuse a bidirectional layer (an encoder, a vision tower): vatp scores causal attention only."""
    if is_causal is False:
        raise UnsupportedError(f"layer {layer_idx} attends bidirectionally (is_causal=False): vatp scores causal "
                               "attention only; use a decoder-only Llama-family model")


def check_additive_mask(layer_idx: int, mask, lowest: float) -> None:
    """Refuse a float mask that adds a bias to the logits (Doge's dynamic mask): vatp reads a mask as
    attend / do not attend, so the bias would be dropped. ``lowest``: the float dtype's most negative value."""
    if bool(((mask != 0) & (mask > lowest / 2)).any()):
        raise UnsupportedError(f"layer {layer_idx} adds a bias to its attention logits through its mask (a float "
                               "mask with values other than 0 and -inf, e.g. Doge's dynamic mask): vatp does not "
                               "implement it, so its scores would not be the model's attention; use a model whose "
                               "mask only hides tokens")


def check_called_once(layer_idx: int, attended: set[int]) -> None:
    """Refuse a layer that calls its attention twice in one forward (DiffLlama's differential attention,
    a recurrent block): its second call would overwrite the first's scores. ``attended``: layers seen in this
    forward, to which ``layer_idx`` is added."""
    if layer_idx in attended:
        raise UnsupportedError(f"layer {layer_idx} calls its attention more than once in a forward (differential "
                               "attention such as DiffLlama's, or a block applied repeatedly): vatp scores one "
                               "attention call per layer and token, so its scores would not be the model's; use a "
                               "model with one attention call per layer")
    attended.add(layer_idx)


def check_cache_in_use(use_cache: bool | None) -> None:
    """Refuse a forward without a KV cache: every step would attend the whole prompt, unpruned."""
    if use_cache is False:
        raise UnsupportedError("vatp prunes the KV cache, and with use_cache=False there is none: every token would "
                               "attend the whole prompt, unpruned; drop use_cache=False (or set "
                               "generation_config.use_cache = True)")


class Window(NamedTuple):
    """How far back a layer attends: ``size`` tokens, as ``what`` says ("a sliding window of 4096 tokens")."""

    size: int
    what: str


def layer_window(config, layer_idx: int, sliding_window: int | None) -> Window | None:
    """The window a layer attends within: the sliding window transformers hands it, or its attention chunks
    (Llama 4's ``chunked_attention`` layers, which only their mask expresses); None: full attention."""
    if sliding_window is not None:
        return Window(int(sliding_window), f"a sliding window of {sliding_window} tokens")
    kinds, chunk = getattr(config, "layer_types", None), getattr(config, "attention_chunk_size", None)
    if chunk is not None and kinds is not None and kinds[layer_idx] == "chunked_attention":
        return Window(int(chunk), f"chunks of {chunk} tokens")
    return None


def check_window(layer_idx: int, window: Window | None, length: int) -> None:
    """Refuse a window shorter than the sequence: the layer would not see what vatp scores."""
    if window is not None and length > window.size:
        raise UnsupportedError(
            f"layer {layer_idx} attends {window.what}, shorter than this sequence ({length} tokens): vatp scores "
            f"full attention, so its scores would not be the model's; keep prompt + generated tokens <= "
            f"{window.size} (a lower model2maxlen or max_new_tokens) or use a model that attends every token")


def left_padding(attention_mask) -> list[int]:
    """Per row, how many padding tokens (zeros of a 2-D ``attention_mask`` (batch, length)) precede the prompt.

    Each row's zeros must be a prefix (left padding, as ``generate`` needs); others are refused, and so
    is a 4-D mask from the caller: vatp could not tell what a decode step may attend. One 4-D mask per
    layer type, as ``generate`` builds them for Gemma 3, is read off the last query row of the full
    attention one: each layer's own mask is then honoured at the prompt (see ``attention_math.row_mask``).
    """
    if isinstance(attention_mask, dict):
        masks = sorted(((kind != "full_attention", kind) for kind, mask in attention_mask.items() if mask is not None))
        if not masks:  # all plain causal, no padding
            return []
        mask = attention_mask[masks[0][1]]
        if getattr(mask, "dim", lambda: None)() != 4:
            raise UnsupportedError(f"vatp reads one 4-D mask per layer type; got {_short(mask)} for {masks[0][1]}")
        last = mask[:, 0, -1, :]  # what each row's last token attends: its own tokens, after its padding
        attention_mask = last if not last.is_floating_point() else last == 0
    if attention_mask is None:
        return []
    if getattr(attention_mask, "dim", lambda: None)() != 2:
        raise UnsupportedError("vatp takes a 2-D (batch, length) attention_mask of left padding; a custom mask "
                               f"({_short(attention_mask)}: packed sequences, prefix-LM, image tokens) would be "
                               "scored as plain causal attention; pass a 2-D mask")
    real = attention_mask.bool()
    pads = (~real).int().cumprod(dim=1).sum(dim=1)  # leading zeros per row
    if int(real.sum()) != int((real.shape[1] - pads).sum()):
        raise UnsupportedError("attention_mask has zeros after a row's first token (right padding or holes): vatp "
                               "prunes left-padded batches only; set tokenizer.padding_side = 'left'")
    if bool((pads == real.shape[1]).any()):
        raise UnsupportedError("a row of attention_mask is all zeros: every prompt needs at least one token")
    return pads.tolist()


def refuse_cropping(*_args, **_kwargs) -> None:
    """A generation cache's ``crop`` while vatp prunes it: assisted decoding undoes rejected draft tokens."""
    raise UnsupportedError("the cache is being cropped to undo tokens (assisted or prompt-lookup decoding), and "
                           "vatp's pruning of them cannot be undone; drop assistant_model / prompt_lookup_num_tokens")


def refuse_reordering(*_args, **_kwargs) -> None:
    """A generation cache's ``reorder_cache`` while vatp prunes it: beam search moves rows between steps."""
    raise UnsupportedError("beam search reorders the cache's rows between steps, and vatp's per-row pruning state "
                           "does not follow them; use num_beams=1 (greedy or sampling, as the paper's code)")


def check_every_layer(attended: set[int], layers: list[int]) -> None:
    """After a prompt's forward, every attention layer must have gone through vatp (``attended``)."""
    missing = sorted(set(layers) - attended)
    if missing:
        raise UnsupportedError(
            f"layer(s) {missing} did not go through vatp's attention in this forward, so their cache would not "
            "be pruned: their attention bypasses transformers' attention interface (a custom attention module, "
            "or a config that pins another implementation); use a Llama-family model whose layers all use it")


def check_own_cache(own: bool) -> None:
    """A forward on a non-empty cache must continue the cache of vatp's current sample (``own``)."""
    if not own:
        raise UnsupportedError(
            "this cache holds tokens, but not the ones vatp pruned in its current sample (it was filled with vatp "
            "off, by an earlier sample, or is a copy, as when a prompt's cache is reused with a deepcopy), so "
            "vatp's state does not describe it; pass a fresh cache (or none) with the whole prompt")


def check_decode_step(new_tokens: int, cached: int, known: bool) -> None:
    """A forward on a pruned cache must bring one token, on a cache vatp filled itself (``known``)."""
    if new_tokens != 1 or not known:
        raise UnsupportedError(
            "vatp prunes a cache it filled itself: run the whole prompt in one forward (on an empty cache), then "
            f"one token per step (got {new_tokens} new tokens on a cache of {cached}); pass a fresh cache (or none) "
            "for a new prompt")


def model_window(config) -> Window | None:
    """The narrowest window some layer of a model config attends within, or None (full attention everywhere)."""
    kinds = getattr(config, "layer_types", None)
    windows = [layer_window(config, i, None) for i in range(len(kinds or []))]
    window = getattr(config, "sliding_window", None)
    if window is not None and (kinds is None or "sliding_attention" in kinds):
        windows.append(layer_window(config, 0, window))
    return min((w for w in windows if w is not None), default=None)


def _short(value) -> str:
    text = repr(value) if not hasattr(value, "shape") else f"<tensor of shape {tuple(value.shape)}>"
    return text if len(text) < 60 else text[:57] + "..."
