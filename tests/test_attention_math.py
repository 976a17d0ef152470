"""Chunked scoring (no L x L matrix) against the eager reference computation, in float32 and float16."""
import math

import pytest
import torch

from vatp.attention_math import (DecodeOperands, chunked_prefill, decode_step, eager_prefill, model_decode_step, model_prefill, scaled_logits,
                          window_prefill)


def _qkv(heads, kv_heads, length, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, length, d, generator=g) * 2
    k = torch.randn(1, kv_heads, length, d, generator=g) * 2
    v = torch.randn(1, kv_heads, length, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (9, 3)])
@pytest.mark.parametrize("window", [None, 400, 7])
@pytest.mark.parametrize("chunk", [1, 37, 512])
def test_chunked_equals_eager_in_float32(heads, kv_heads, window, chunk):
    q, k, v = _qkv(heads, kv_heads, 450)
    out_e, sums_e = eager_prefill(q, k, v, None, 0.25, window)
    out_c, sums_c = chunked_prefill(q, k, v, None, 0.25, window, chunk)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums_c, sums_e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads,kv_heads,d", [(4, 4, 16), (9, 3, 64), (8, 2, 128)])
@pytest.mark.parametrize("window", [None, 400])
def test_chunked_is_eager_bit_for_bit_in_float16_when_the_scored_rows_fit_a_chunk(heads, kv_heads, d, window):
    """The paper's float16 arithmetic: probabilities rounded to float16, then summed; same outputs."""
    q, k, v = _qkv(heads, kv_heads, 700, d, dtype=torch.float16)
    out_e, sums_e = eager_prefill(q, k, v, None, d ** -0.5, window)
    out_c, sums_c = chunked_prefill(q, k, v, None, d ** -0.5, window, chunk=700 if window is None else 128)
    assert sums_c.dtype == sums_e.dtype == torch.float16
    assert torch.equal(out_c, out_e) and torch.equal(sums_c, sums_e)


def test_chunked_float16_sums_over_several_chunks_are_eager_to_one_ulp():
    q, k, v = _qkv(8, 2, 1500, 64, dtype=torch.float16)
    _, sums_e = eager_prefill(q, k, v, None, 0.125, None)
    _, sums_c = chunked_prefill(q, k, v, None, 0.125, None, chunk=256)
    ulp = torch.finfo(torch.float16).eps * sums_e.float().abs()
    assert ((sums_c.float() - sums_e.float()).abs() <= ulp).all()
    assert (sums_c != sums_e).float().mean() < 1e-3  # float32 summation order flips a rare rounding


def test_logits_are_divided_by_sqrt_head_dim_as_the_paper_does():
    """x / sqrt(128) and x * 128**-0.5 round differently in float16; the paper's code divides."""
    q, k, _ = _qkv(4, 4, 200, 128, dtype=torch.float16)
    kt = k.transpose(2, 3)
    divided = torch.matmul(q, kt) / math.sqrt(128)
    assert torch.equal(scaled_logits(q, kt, 128 ** -0.5), divided)
    assert not torch.equal(torch.matmul(q, kt) * 128 ** -0.5, divided)


@pytest.mark.parametrize("prefill", [eager_prefill, chunked_prefill])
def test_float32_scores_of_a_half_model_are_the_unrounded_probabilities(prefill):
    q, k, v = _qkv(6, 2, 300, dtype=torch.bfloat16)
    _, reference = eager_prefill(q.float(), k.float(), v.float(), None, 0.25, None)
    _, sums = prefill(q, k, v, None, 0.25, None, score_dtype=torch.float32)
    _, rounded = prefill(q, k, v, None, 0.25, None)
    assert sums.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    # bfloat16 logits differ from float32 ones; the sums themselves are not rounded to 8 bits.
    assert (sums - reference).abs().max() < (rounded.float() - reference).abs().max()
    assert sums.sum(dim=1).sub(300).abs().max() < 1e-3  # each row's probabilities sum to 1


def test_column_sums_of_all_queries_sum_to_the_number_of_queries():
    q, k, v = _qkv(4, 2, 300)
    _, sums = chunked_prefill(q, k, v, None, 0.25, None, 64)
    torch.testing.assert_close(sums.sum(dim=1), torch.full((4,), 300.0))
    assert (sums[:, -1] < 1.5).all()  # the last key is seen by one query only


def test_explicit_boolean_mask_matches_causal_default():
    q, k, v = _qkv(4, 4, 64)
    causal = torch.ones(64, 64, dtype=torch.bool).tril()[None, None]
    for prefill in (eager_prefill, chunked_prefill):
        a = prefill(q, k, v, None, 0.25, None)
        b = prefill(q, k, v, causal, 0.25, None)
        torch.testing.assert_close(a, b)


def test_decode_step_gives_pruned_keys_exactly_zero_probability():
    q, k, v = _qkv(6, 3, 20)
    keep = torch.rand(3, 20) > 0.5
    keep[:, -1] = True
    out, probs = decode_step(q[:, :, -1:], DecodeOperands.of(k, v, keep[None]), 0.25)
    probs = probs[0].reshape(6, 20)  # (kv_heads, group, C) -> (heads, C)
    assert (probs[~keep.repeat_interleave(2, 0)] == 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(6))
    # Same output as attending only the kept keys of each KV head.
    for h in range(6):
        kept = keep[h // 2]
        ref = torch.softmax(q[0, h, -1] @ k[0, h // 2, kept].T * 0.25, -1) @ v[0, h // 2, kept]
        torch.testing.assert_close(out[0, 0, h], ref, rtol=1e-5, atol=1e-6)
    # The model's own attention (SDPA) over the same kept keys, for methods that score nothing then.
    torch.testing.assert_close(model_decode_step(q[:, :, -1:], k, v, keep[None, :, None], 0.25), out, rtol=1e-5, atol=1e-6)


def test_the_models_own_prompt_attention_equals_eager_output():
    q, k, v = _qkv(6, 3, 40)
    causal = torch.ones(40, 40, dtype=torch.bool).tril()[None, None]
    for mask in (None, causal):
        torch.testing.assert_close(model_prefill(q, k, v, mask, 0.25), eager_prefill(q, k, v, mask, 0.25, None)[0],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,kv_heads,window", [(4, 4, 32), (6, 2, 400), (6, 2, 1), (4, 2, 500)])
def test_window_scoring_sums_are_eagers_bit_for_bit_and_its_output_sdpas(dtype, heads, kv_heads, window):
    q, k, v = (t.to(dtype) for t in _qkv(heads, kv_heads, 450))
    out, sums = window_prefill(q, k, v, None, 0.125, window)
    eager_out, eager_sums = eager_prefill(q, k, v, None, 0.125, window)
    assert sums.dtype == dtype
    if dtype == torch.float16:  # the paper's arithmetic: probabilities rounded to float16, then summed
        assert torch.equal(sums, eager_sums)
    else:  # a few query rows may take another matmul kernel than all of them: an ulp or so
        torch.testing.assert_close(sums, eager_sums, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(out, model_prefill(q, k, v, None, 0.125), rtol=0, atol=0)
    torch.testing.assert_close(out.float(), eager_out.float(), rtol=1e-2, atol=1e-2 if dtype == torch.float16 else 1e-5)


@pytest.mark.parametrize("window", [None, 1], ids=["every query (H2O)", "the last query (TOVA)"])
def test_no_chunk_holds_a_single_query_row_so_chunked_equals_eager_bit_for_bit(window):
    """A one-row product runs a matrix-vector kernel, which rounds otherwise than eager's matrix product: 512-row
    chunks of 1025 queries would leave row 1024 alone, and a window of 1 would be a chunk of its own."""
    q, k, v = _qkv(4, 2, 1025)
    out, sums = eager_prefill(q, k, v, None, 0.25, window)
    chunked_out, chunked_sums = chunked_prefill(q, k, v, None, 0.25, window, 512)
    assert torch.equal(chunked_out, out)
    if window == 1:  # one scored row: no sum across chunks
        assert torch.equal(chunked_sums, sums)
        assert torch.equal(window_prefill(q, k, v, None, 0.25, window)[1], sums)
