"""Attention with the per-key scores the policy needs.

Four ways to score a prompt, same result up to float rounding:

* :func:`eager_prefill` materialises the (heads, L, L) probabilities, as the
  paper's code does. It is the faithful reference.
* :func:`chunked_prefill` computes the same in chunks of query rows, so
  peak extra memory is O(heads x chunk x L), not O(L^2).
* :func:`window_prefill` runs the model's own SDPA for every query and computes
  probabilities for a method's window of last queries only.
* ``vatp.fused.fused_prefill`` is SDPA plus a Triton column-sum kernel (CUDA).

:func:`decode_step` attends one new query per row, optionally under a keep mask, in the same
arithmetic; :func:`model_decode_step` is the model's own SDPA for methods that score nothing then.
Shapes: query (1, heads, q, d); key (1, kv_heads, kv_len, d); value (1, kv_heads, kv_len, dv), where
dv may differ from d (MiMo-V2's 128-wide values on 192-wide keys); decode steps: B rows.

``score_dtype`` is the arithmetic of the scores. The paper's code (float16)
computes logits in the model dtype, the softmax in float32, rounds the
probabilities back to the model dtype and sums those: ``score_dtype`` equal
to the model dtype reproduces that rounding (bit for bit when the scored
queries fit in one chunk). ``torch.float32`` keeps the unrounded
probabilities instead (for bfloat16 models, whose 8-bit mantissa loses the
decode steps' small increments).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def _repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """(1, kv_heads, n, d) -> (1, heads, n, d), transformers' GQA layout."""
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def scaled_logits(query, key_t, scaling) -> torch.Tensor:
    """q @ k^T / sqrt(head_dim) in the model dtype, divided as the paper's code divides.

    ``x / sqrt(d)`` and ``x * d**-0.5`` round differently (0.1% of float16
    logits differ at d = 128), so the division is kept.
    """
    return torch.matmul(query, key_t) / (1 / scaling)


def probabilities(logits, model_dtype, score_dtype=None):
    """The softmax of a row of logits as the paper's code rounds it, and the probabilities to score.

    Softmax in float32, rounded to the model dtype: what the model attends with.
    The scored ones are those (``score_dtype`` None or the model dtype), or the
    float32 softmax rounded to ``score_dtype``. Every scoring path calls this, so
    eager, chunked and decode steps round alike.
    """
    exact = F.softmax(logits, dim=-1, dtype=torch.float32)
    probs = exact.to(model_dtype)
    return probs, (probs if score_dtype in (None, model_dtype) else exact.to(score_dtype))


def _causal_allowed(q_len: int, kv_len: int, device, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """(rows, kv_len) bool: query rows ``start:stop`` of the last ``q_len`` positions."""
    stop = q_len if stop is None else stop
    q_pos = torch.arange(start, stop, device=device) + (kv_len - q_len)
    return torch.arange(kv_len, device=device)[None, :] <= q_pos[:, None]


def _allowed(mask: torch.Tensor | None, q_len: int, kv_len: int, device, start=0, stop=None) -> torch.Tensor:
    """Boolean attention permission for query rows ``start:stop``: (1|b, 1|h, rows, kv_len)."""
    if mask is None:
        return _causal_allowed(q_len, kv_len, device, start, stop)[None, None]
    mask = mask[:, :, start:stop, :kv_len]
    return mask if mask.dtype == torch.bool else mask == 0


def row_mask(mask: torch.Tensor | None, row: int, pad: int, chunk: int = 1024) -> torch.Tensor | None:
    """Row ``row``'s own prompt mask, from a left-padded batch's (B, 1|heads, L, L) one.

    None where it is plain causal over the row's tokens after its ``pad`` (so scoring may skip the keys after
    each query), else its (1, 1|heads, L - pad, L - pad) slice, for scoring to honour (prefix-LM or image
    tokens that see each other). Compared ``chunk`` query rows at a time, so no L x L tensor is built.
    """
    if mask is None:
        return None
    own = mask[row:row + 1, :, pad:, pad:]
    n = own.shape[-1]
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        if not bool((_allowed(own, n, n, own.device, lo, hi) == _causal_allowed(n, n, own.device, lo, hi)).all()):
            return own
    return None


def eager_prefill(query, key, value, mask, scaling, window: int | None, score_dtype=None):
    """Full attention with explicit probabilities, as the paper's code computes them.

    Returns the output (1, q, heads, d) and the column sums of the
    probabilities over the last ``window`` queries (all if None): (heads, kv_len)
    in ``score_dtype`` (default: the model dtype, the paper's arithmetic).
    """
    group = query.shape[1] // key.shape[1]
    q_len, kv_len = query.shape[2], key.shape[2]
    logits = scaled_logits(query, _repeat_kv(key, group).transpose(2, 3), scaling)
    logits = logits.masked_fill(~_allowed(mask, q_len, kv_len, query.device), torch.finfo(logits.dtype).min)
    probs, scored = probabilities(logits, query.dtype, score_dtype)  # (1, heads, q, kv) each
    del logits
    out = torch.matmul(probs, _repeat_kv(value, group)).transpose(1, 2)
    rows = scored[0] if window is None else scored[0, :, max(q_len - window, 0):]
    return out, rows.sum(dim=1)


def _row_chunks(q_len: int, start: int, chunk: int) -> list[tuple[int, int]]:
    """Query-row chunks of at most ``chunk`` rows (one more where merged), one of them starting at the first
    scored row ``start``, and none of one row unless the prompt is one token.

    Scored rows then fall in as few chunks as possible (one when a window or
    the prompt fits a chunk), so their sum is eager's sum bit for bit. A one-row
    product runs another kernel (matrix times vector) that rounds otherwise than
    eager's, so a chunk of one row joins its neighbour.
    """
    chunk = max(chunk, 2)
    before = [(max(hi - chunk, 0), hi) for hi in range(start, 0, -chunk)][::-1]
    chunks = []
    for lo, hi in before + [(lo, min(lo + chunk, q_len)) for lo in range(start, q_len, chunk)]:
        if chunks and (hi - lo == 1 or chunks[-1][1] - chunks[-1][0] == 1):
            chunks[-1] = (chunks[-1][0], hi)
        else:
            chunks.append((lo, hi))
    return chunks


def chunked_prefill(query, key, value, mask, scaling, window: int | None, chunk: int = 512, score_dtype=None,
                    accumulate: bool = False):
    """:func:`eager_prefill` computed in chunks of query rows: same contract, same arithmetic.

    Each chunk holds whole rows of logits, so its softmax, its rounding to the
    model dtype and its output are eager's; the scored rows' column sums are
    added across chunks in float32. Only (heads, chunk, kv) is alive at a time,
    not the L x L matrix. Under a plain causal mask (``mask`` None) a chunk
    skips the keys after its last query, which get probability 0: half the
    work of a prompt. The queries may be the last of the keys' (a prompt's
    later part, whose earlier keys are cached). With ``accumulate`` the sums
    stay in float32, to be added to those of the prompt's other parts and
    rounded to ``score_dtype`` once.
    """
    heads, q_len, d = query.shape[1:]
    kv_heads, kv_len, dv = key.shape[1], key.shape[2], value.shape[3]
    group = heads // kv_heads
    score_dtype = score_dtype or query.dtype
    start = 0 if window is None else max(q_len - window, 0)
    keys_t, values = key[0].transpose(1, 2), value[0]  # (kv_heads, d, kv), (kv_heads, kv, dv)
    out = torch.empty(kv_heads, group, q_len, dv, dtype=query.dtype, device=query.device)
    sums = torch.zeros(heads, kv_len, dtype=torch.float32, device=query.device)
    for lo, hi in _row_chunks(q_len, start, chunk):
        rows = hi - lo
        # (kv_heads, group * rows, d) @ (kv_heads, d, kv): grouped heads share one key read.
        q = query[0, :, lo:hi].reshape(kv_heads, group * rows, d)
        seen = kv_len if mask is not None else kv_len - q_len + hi  # keys any of these rows may see
        logits = scaled_logits(q, keys_t[:, :, :seen], scaling).view(heads, rows, seen)
        allowed = _allowed(mask, q_len, kv_len, query.device, lo, hi)[0, :, :, :seen]
        logits.masked_fill_(~allowed, torch.finfo(logits.dtype).min)
        probs, scored = probabilities(logits, query.dtype, score_dtype)
        del logits
        out[:, :, lo:hi] = torch.matmul(probs.view(kv_heads, group * rows, seen), values[:, :seen]).view(
            kv_heads, group, rows, dv)
        if hi > start:
            sums[:, :seen] += scored[:, max(start - lo, 0):].sum(dim=1, dtype=torch.float32)
    return out.view(heads, q_len, dv).transpose(0, 1)[None], sums if accumulate else sums.to(score_dtype)


def window_prefill(query, key, value, mask, scaling, window: int, score_dtype=None):
    """The model's own attention (SDPA) for every query, and the probabilities of the last ``window`` ones only.

    The contract of :func:`eager_prefill`: its column sums in its arithmetic (each scored row is computed as
    eager computes it, and they are summed in one go; bit for bit in float16 in the tests, to an ulp in float32
    where a few rows take another matmul kernel), its output to SDPA's rounding. For a method that scores a
    few hundred queries of a long prompt, scoring costs a (heads, window, L) tile instead of (heads, L, L).
    """
    heads, q_len, d = query.shape[1:]
    kv_heads, kv_len = key.shape[1], key.shape[2]
    start = max(q_len - max(window, 2), 0)  # two rows at least: one would take a matrix-vector kernel (see _row_chunks)
    rows = q_len - start
    q = query[0, :, start:].reshape(kv_heads, heads // kv_heads * rows, d)  # grouped heads share one key read
    logits = scaled_logits(q, key[0].transpose(1, 2), scaling).view(heads, rows, kv_len)
    logits.masked_fill_(~_allowed(mask, q_len, kv_len, query.device, start, q_len)[0], torch.finfo(logits.dtype).min)
    _, scored = probabilities(logits, query.dtype, score_dtype)
    return model_prefill(query, key, value, mask, scaling), scored[:, max(rows - window, 0):].sum(dim=1)


def model_prefill(query, key, value, mask, scaling):
    """The model's own attention (SDPA) of a prompt, nothing scored: the contract of :func:`eager_prefill`'s output.

    query (1, heads, q, d), key (1, kv_heads, L, d), value (1, kv_heads, L, dv), the queries the last q of the
    keys' (q < L: a prompt's later part, whose earlier keys are cached); ``mask`` None (causal) or the row's own
    boolean (1, 1|heads, q, L) mask -> (1, q, heads, dv).
    """
    group = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, group), _repeat_kv(value, group)
    if mask is None and query.shape[2] != key.shape[2]:  # SDPA's is_causal would align the queries to the first key
        mask = _causal_allowed(query.shape[2], key.shape[2], query.device)[None, None]
    if mask is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
    else:
        allowed = _allowed(mask, query.shape[2], key.shape[2], query.device)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)
    return out.transpose(1, 2)


class DecodeOperands(NamedTuple):
    """A decode step's cache as one row of C slots per batch row and KV head, the shapes of one ``bmm``.

    keys_t (B * kv_heads, d, C), values (B * kv_heads, C, dv), attended (B * kv_heads, 1, C) bool or None
    (every slot). Views: over a cache whose tensors change in place (the evict backend's), made once.
    """

    keys_t: torch.Tensor
    values: torch.Tensor
    attended: torch.Tensor | None
    kv_heads: int

    @classmethod
    def of(cls, key, value, attended: torch.Tensor | None = None) -> "DecodeOperands":
        """From key (B, kv_heads, C, d), value (B, kv_heads, C, dv) and attended (B, kv_heads, C) or None."""
        batch, kv_heads, slots, d = key.shape
        rows = batch * kv_heads  # reshape: a view, or a copy where a model's cache is not contiguous (MLA)
        return cls(key.reshape(rows, slots, d).transpose(1, 2), value.reshape(rows, slots, value.shape[3]),
                   None if attended is None else attended.reshape(rows, 1, slots), kv_heads)


def decode_step(query, cache: DecodeOperands, scaling, score_dtype=None):
    """Attention of one new query per row over the slots ``cache.attended`` says.

    Masked logits get the dtype's minimum before the softmax, so their
    probability is exactly 0 (the paper's ``w*m + (1-m)*min``). The query
    heads of a GQA group attend their shared KV head in one batched matmul,
    without copying the cache per query head.
    Returns the output (B, 1, heads, dv) and the probabilities (B, kv_heads, group, C)
    in ``score_dtype`` (default: the model dtype).
    """
    batch, heads, d = query.shape[0], query.shape[1], query.shape[3]
    group, slots, dv = heads // cache.kv_heads, cache.keys_t.shape[2], cache.values.shape[2]
    logits = torch.bmm(query.reshape(-1, group, d), cache.keys_t) / (1 / scaling)  # divided as scaled_logits divides
    if cache.attended is not None:
        logits = logits.masked_fill(~cache.attended, torch.finfo(logits.dtype).min)
    probs, scored = probabilities(logits, query.dtype, score_dtype)
    out = torch.bmm(probs, cache.values)  # (B * kv_heads, group, dv)
    return out.view(batch, 1, heads, dv), scored.view(batch, cache.kv_heads, group, slots)


def model_decode_step(query, key, value, mask: torch.Tensor | None, scaling):
    """The model's own attention (SDPA) of one new query per row over the slots ``mask`` lets it see, nothing scored.

    query (B, heads, 1, d), key (B, kv_heads, C, d), value (B, kv_heads, C, dv), mask (B, kv_heads, 1, C): bool
    (True: attended) or additive, or None (every slot) -> (B, 1, heads, dv). A GQA group's query heads are its
    KV head's query rows, so one mask per KV head needs no copy of the cache per query head.
    """
    batch, heads, d = query.shape[0], query.shape[1], query.shape[3]
    kv_heads = key.shape[1]
    q = query.view(batch, kv_heads, heads // kv_heads, d)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)  # (B, kv_heads, group, dv)
    return out.view(batch, 1, heads, value.shape[3])
