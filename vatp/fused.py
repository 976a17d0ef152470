"""Fused prefill scoring: a Triton kernel for the attention each key receives.

The chunked torch version (:func:`vatp.attention_math.chunked_prefill`)
writes every probability tile to memory, which on a GPU costs many times
the attention itself (a tile of heads x chunk x L written and read back per
chunk, where flash attention keeps its tiles on chip). Here one Triton program owns
a block of keys, loops over the query blocks that can see it, and sums
``exp(q.k * scale - lse(row))`` in registers, where ``lse`` is each query
row's log-sum-exp returned by SDPA's own kernel alongside the output. Extra
memory: the (heads, kv_len) result.

With ``score_dtype`` the model dtype (the paper's arithmetic) the kernel
rounds the logits and each probability to that dtype before summing, as
:func:`vatp.attention_math.eager_prefill` does; the row log-sum-exp still comes from
SDPA's unrounded logits, so the sums match eager to float16 rounding, not
bit for bit.

Runs on CUDA tensors, or anywhere under ``TRITON_INTERPRET=1`` (how the
tests check it on CPU). Causal prompts only (no padding mask).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .attention_math import _repeat_kv

BLOCK_M, BLOCK_N = 64, 64  # query rows per inner step, keys per program


@triton.jit
def _column_sums_kernel(q_ptr, k_ptr, lse_ptr, out_ptr,
                        stride_qh, stride_qm, stride_kh, stride_kn, stride_lh, stride_oh,
                        q_len, kv_len, q_start, group, scaling,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        PRECISION: tl.constexpr, ROUND: tl.constexpr):
    block_n, head = tl.program_id(0), tl.program_id(1)
    keys = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    k = tl.load(k_ptr + (head // group) * stride_kh + keys[:, None] * stride_kn + dims[None, :],
                mask=keys[:, None] < kv_len, other=0.0)
    shift = kv_len - q_len  # query row i sits at position i + shift
    # The first query row that can see this block's first key, aligned down to a block.
    first = block_n * BLOCK_N - shift
    first = tl.where(first > q_start, first, q_start)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range((first // BLOCK_M) * BLOCK_M, q_len, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = (rows >= q_start) & (rows < q_len)
        q = tl.load(q_ptr + head * stride_qh + rows[:, None] * stride_qm + dims[None, :],
                    mask=row_ok[:, None], other=0.0)
        lse = tl.load(lse_ptr + head * stride_lh + rows, mask=row_ok, other=float("inf"))
        logits = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        if ROUND:  # the model dtype's logits, divided by sqrt(d) as the paper's code divides
            logits = (logits.to(q.dtype).to(tl.float32) / (1 / scaling)).to(q.dtype).to(tl.float32)
        else:
            logits = logits * scaling
        probs = tl.exp(logits - lse[:, None])
        if ROUND:
            probs = probs.to(q.dtype).to(tl.float32)
        seen = row_ok[:, None] & (keys[None, :] <= rows[:, None] + shift) & (keys[None, :] < kv_len)
        acc += tl.sum(tl.where(seen, probs, 0.0), axis=0)
    tl.store(out_ptr + head * stride_oh + keys, acc, mask=keys < kv_len)


def column_sums(query, key, lse, scaling, window: int | None, score_dtype=None) -> torch.Tensor:
    """Causal softmax probabilities summed over the last ``window`` queries (all if None).

    query (1, heads, q, d), key (1, kv_heads, kv, d), lse (1, heads, q) float32
    -> (heads, kv) float32 sums of probabilities rounded to ``score_dtype``
    (default: the model dtype); the column sums of ``chunked_prefill``.
    """
    if not query.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("scoring='fused' runs on CUDA tensors; use scoring='chunked' on CPU")
    heads, q_len, head_dim = query.shape[1:]
    kv_heads, kv_len = key.shape[1], key.shape[2]
    if head_dim & (head_dim - 1):
        raise ValueError(f"scoring='fused' needs a power-of-two head_dim, got {head_dim}; use scoring='chunked'")
    q, k, lse = (t[0] if t.stride(-1) == 1 else t[0].contiguous() for t in (query, key, lse.float()))
    out = torch.empty(heads, kv_len, dtype=torch.float32, device=query.device)
    q_start = 0 if window is None else max(q_len - window, 0)
    precision = "ieee" if query.dtype == torch.float32 else "tf32"  # fp32 models: no TF32 rounding
    grid = (triton.cdiv(kv_len, BLOCK_N), heads)
    _column_sums_kernel[grid](q, k, lse, out, q.stride(0), q.stride(1), k.stride(0), k.stride(1), lse.stride(0),
                              out.stride(0), q_len, kv_len, q_start, heads // kv_heads, scaling,
                              HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, PRECISION=precision,
                              ROUND=(score_dtype or query.dtype) != torch.float32)
    return out


def attention_with_lse(query, key, value, scaling):
    """Causal attention output (1, heads, q, d) and row log-sum-exp (1, heads, q) from PyTorch's own kernels."""
    if not query.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p=0.0, is_causal=True, scale=scaling)[:2]
    elif query.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p=0.0, is_causal=True, scale=scaling)[:2]
    else:  # flash has no float32; the memory-efficient kernel pads lse's length
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, dropout_p=0.0, is_causal=True, scale=scaling)[:2]
    return out, lse[..., :query.shape[2]]


def fused_prefill(query, key, value, mask, scaling, window: int | None, score_dtype=None):
    """The contract of :func:`vatp.attention_math.eager_prefill`, with no L x L matrix and no probability tiles."""
    if mask is not None:
        raise ValueError("scoring='fused' scores plain causal prompts (no padding mask); use scoring='chunked'")
    group = query.shape[1] // key.shape[1]
    out, lse = attention_with_lse(query, _repeat_kv(key, group), _repeat_kv(value, group), scaling)
    sums = column_sums(query, key, lse, scaling, window, score_dtype)
    return out.transpose(1, 2), sums.to(score_dtype or query.dtype)
