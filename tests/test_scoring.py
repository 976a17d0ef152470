"""Chunked scoring (no L x L matrix) against the eager reference computation."""
import pytest
import torch

from vatp.scoring import attention_column_sums, chunked_prefill, decode_step, eager_prefill


def _qkv(heads, kv_heads, length, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, length, d, generator=g, dtype=dtype) * 2
    k = torch.randn(1, kv_heads, length, d, generator=g, dtype=dtype) * 2
    v = torch.randn(1, kv_heads, length, d, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (9, 3)])
@pytest.mark.parametrize("window", [None, 400, 7])
@pytest.mark.parametrize("chunk", [1, 37, 512])
def test_chunked_column_sums_equal_eager(heads, kv_heads, window, chunk):
    q, k, v = _qkv(heads, kv_heads, 450)
    _, eager = eager_prefill(q, k, v, None, 0.25, window)
    chunked = attention_column_sums(q, k, None, 0.25, window, chunk)
    torch.testing.assert_close(chunked, eager, rtol=1e-5, atol=1e-5)


def test_column_sums_of_all_queries_sum_to_the_number_of_queries():
    q, k, _ = _qkv(4, 2, 300)
    sums = attention_column_sums(q, k, None, 0.25, None, 64)
    torch.testing.assert_close(sums.sum(dim=1), torch.full((4,), 300.0))
    assert (sums[:, -1] < 1.5).all()  # the last key is seen by one query only


def test_chunked_prefill_output_equals_eager_output():
    q, k, v = _qkv(6, 2, 200)
    out_e, sums_e = eager_prefill(q, k, v, None, 0.25, None)
    out_c, sums_c = chunked_prefill(q, k, v, None, 0.25, None, chunk=50)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums_c, sums_e, rtol=1e-5, atol=1e-5)


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
    out, probs = decode_step(q[:, :, -1:], k, v, keep, 0.25)
    assert (probs[~keep.repeat_interleave(2, 0)] == 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(6))
    # Same output as attending only the kept keys of each KV head.
    for h in range(6):
        kept = keep[h // 2]
        ref = torch.softmax(q[0, h, -1] @ k[0, h // 2, kept].T * 0.25, -1) @ v[0, h // 2, kept]
        torch.testing.assert_close(out[0, 0, h], ref, rtol=1e-5, atol=1e-6)
