"""Attention with the per-key scores the policy needs.

Two ways to score a prompt, same result up to float rounding:

* :func:`eager_prefill` materialises the (heads, L, L) probabilities, as the
  paper's code does. It is the faithful reference.
* :func:`chunked_prefill` takes the attention output from SDPA (flash or
  memory-efficient kernels) and rebuilds the column sums of the softmax in
  query chunks, so peak extra memory is O(heads x chunk x L), not O(L^2).

:func:`decode_step` attends one new query, optionally under a keep mask.
Shapes: query (1, heads, q, d); key, value (1, kv_heads, kv_len, d).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """(1, kv_heads, n, d) -> (1, heads, n, d), transformers' GQA layout."""
    return x if group == 1 else x.repeat_interleave(group, dim=1)


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


def eager_prefill(query, key, value, mask, scaling, window: int | None):
    """Full attention with explicit probabilities, as the paper's code computes them.

    Returns the output (1, q, heads, d) and the column sums of the
    probabilities over the last ``window`` queries (all if None): (heads, kv_len),
    in the model dtype (softmax in float32, cast back, then summed, as the paper).
    """
    group = query.shape[1] // key.shape[1]
    q_len, kv_len = query.shape[2], key.shape[2]
    logits = torch.matmul(query, _repeat_kv(key, group).transpose(2, 3)) * scaling
    logits = logits.masked_fill(~_allowed(mask, q_len, kv_len, query.device), torch.finfo(logits.dtype).min)
    probs = F.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)  # (1, heads, q, kv)
    out = torch.matmul(probs, _repeat_kv(value, group)).transpose(1, 2)
    rows = probs[0] if window is None else probs[0, :, max(q_len - window, 0):]
    return out, rows.sum(dim=1)


def attention_column_sums(query, key, mask, scaling, window: int | None, chunk: int = 512) -> torch.Tensor:
    """Softmax probabilities summed over the last ``window`` queries, without the L x L matrix.

    query (1, heads, q, d), key (1, kv_heads, kv, d) -> (heads, kv) float32.
    Each chunk of query rows holds whole rows of logits, so its softmax is
    exact; only (heads, chunk, kv) is alive at a time. Under a plain causal
    mask (``mask`` None) a chunk skips the keys after its last query, which
    would get probability 0: half the work of a prompt.
    """
    heads, q_len, d = query.shape[1:]
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    start = 0 if window is None else max(q_len - window, 0)
    keys_t = key[0].transpose(1, 2)  # (kv_heads, d, kv)
    sums = torch.zeros(heads, kv_len, dtype=torch.float32, device=query.device)
    for lo in range(start, q_len, chunk):
        hi = min(lo + chunk, q_len)
        # (kv_heads, group * rows, d) @ (kv_heads, d, kv): grouped heads share one key read.
        q = query[0, :, lo:hi].reshape(kv_heads, group * (hi - lo), d)
        seen = kv_len if mask is not None else kv_len - q_len + hi  # keys any of these rows may see
        logits = torch.matmul(q, keys_t[:, :, :seen]).view(heads, hi - lo, seen).float().mul_(scaling)
        allowed = _allowed(mask, q_len, kv_len, query.device, lo, hi)[0, :, :, :seen]
        logits.masked_fill_(~allowed, float("-inf"))
        # Softmax in place (one float32 buffer alive): p = exp(logit - logsumexp of the row).
        sums[:, :seen] += logits.sub_(logits.logsumexp(dim=-1, keepdim=True)).exp_().sum(dim=1)
    return sums


def chunked_prefill(query, key, value, mask, scaling, window: int | None, chunk: int = 512):
    """SDPA output plus :func:`attention_column_sums`: same contract as :func:`eager_prefill`."""
    group = query.shape[1] // key.shape[1]
    sdpa_mask = None if mask is None else _allowed(mask, query.shape[2], key.shape[2], query.device)
    out = F.scaled_dot_product_attention(
        query, _repeat_kv(key, group), _repeat_kv(value, group),
        attn_mask=sdpa_mask, is_causal=mask is None, scale=scaling,
    ).transpose(1, 2)
    sums = attention_column_sums(query, key, mask, scaling, window, chunk)
    return out, sums.to(query.dtype)


def decode_step(query, key, value, keep: torch.Tensor | None, scaling):
    """Attention of one new query; ``keep`` (kv_heads, kv_len) bool masks pruned keys.

    Pruned logits get the dtype's minimum before the softmax, so their
    probability is exactly 0 (the paper's ``w*m + (1-m)*min``). The query
    heads of a GQA group attend their shared KV head in one batched matmul,
    without copying the cache per query head.
    Returns the output (1, 1, heads, d) and the probabilities (heads, kv_len).
    """
    heads, d = query.shape[1], query.shape[3]
    kv_heads, kv_len = key.shape[1], key.shape[2]
    q = query[0, :, 0].view(kv_heads, heads // kv_heads, d)  # (kv_heads, group, d)
    logits = torch.matmul(q, key[0].transpose(1, 2)) * scaling  # (kv_heads, group, kv)
    if keep is not None:
        logits = logits.masked_fill(~keep[:, None, :], torch.finfo(logits.dtype).min)
    probs = F.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value[0])  # (kv_heads, group, d)
    return out.reshape(1, 1, heads, d), probs.reshape(heads, kv_len)
