"""The Triton column-sum kernel equals the chunked torch scoring.

On CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set
before triton is imported, so in a child process); on a GPU it runs
compiled. Both skip when triton is not installed.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vatp
from conftest import REPO, VARIANT_IDS, VARIANTS, greedy, tiny_llama

pytestmark = pytest.mark.slow  # runs subprocesses

pytest.importorskip("triton")

INTERPRETED = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, "tests")
    from vatp import attention_math
    from vatp.fused import fused_prefill

    worst = 0.0
    for heads, kv_heads, length, window, dim in [(4, 4, 100, None, 32), (6, 2, 150, None, 64),
                                                   (6, 2, 150, 40, 64), (4, 1, 64, 400, 16), (2, 2, 1, None, 16)]:
        g = torch.Generator().manual_seed(length + heads)
        q, k, v = (torch.randn(1, h, length, dim, generator=g) for h in (heads, kv_heads, kv_heads))
        out, sums = fused_prefill(q, k, v, None, dim ** -0.5, window)
        ref_out, ref_sums = attention_math.eager_prefill(q, k, v, None, dim ** -0.5, window)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)
        worst = max(worst, ((sums - ref_sums).abs() / ref_sums.abs().clamp_min(1e-6)).max().item())
        rows = length if window is None else min(window, length)
        assert abs(sums.sum().item() - heads * rows) < 1e-3 * heads * rows  # each row's probabilities sum to 1

    # float16: logits and probabilities rounded as eager rounds them; the row log-sum-exp is SDPA's,
    # so a sum may land one float16 ulp from eager's.
    for heads, kv_heads, length, window, dim in [(4, 4, 100, None, 32), (6, 2, 150, 40, 64), (8, 2, 300, None, 128)]:
        g = torch.Generator().manual_seed(length)
        q, k, v = (torch.randn(1, h, length, dim, generator=g).half() for h in (heads, kv_heads, kv_heads))
        out, sums = fused_prefill(q, k, v, None, dim ** -0.5, window)
        ref_out, ref_sums = attention_math.eager_prefill(q, k, v, None, dim ** -0.5, window)
        assert sums.dtype == torch.float16
        torch.testing.assert_close(out, ref_out, rtol=2e-3, atol=2e-3)
        assert ((sums.float() - ref_sums.float()).abs() <= 2 ** -10 * ref_sums.float().abs()).all()

    import vatp
    from conftest import VARIANTS, greedy, tiny_llama
    model = tiny_llama(num_heads=4, num_kv_heads=2)
    ids = torch.randint(0, 128, (1, 90), generator=torch.Generator().manual_seed(0))
    for variant in VARIANTS:
        runs = []
        for scoring_name in ("chunked", "fused"):
            with vatp.enabled(model, heavy_ratio=0.2, sink_len=2, backend="evict", scoring=scoring_name, **variant):
                runs.append(greedy(model, ids, 8))
        assert runs[0][0] == runs[1][0], variant
        torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-4, atol=1e-4)
    print(f"worst relative difference {worst:.1e}")
""")


def test_kernel_matches_eager_scoring_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout.strip())


def test_fused_on_cpu_without_the_interpreter_is_refused_clearly():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs CPU tensors")
    model = tiny_llama()
    with vatp.enabled(model, heavy_ratio=0.2, backend="evict", scoring="fused"):
        with pytest.raises(ValueError, match="use scoring='chunked' on CPU"):
            model(torch.randint(0, 128, (1, 20)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("window", [None, 400])
def test_kernel_matches_chunked_scoring_on_gpu(dtype, window):
    """float32: equal to rounding. float16: the two round differently (the kernel keeps its probability tile in
    float32; chunked rounds it to float16 as eager attention does), so each is held to float32 arithmetic on
    the same inputs, and the kernel may not be more than twice as far from it as chunked scoring is."""
    from vatp import attention_math
    from vatp.fused import fused_prefill

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, h, 3000, 128, generator=g, device="cuda", dtype=dtype) for h in (32, 8, 8))
    out, sums = fused_prefill(q, k, v, None, 128 ** -0.5, window)
    ref_out, ref_sums = attention_math.chunked_prefill(q, k, v, None, 128 ** -0.5, window)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)
        return
    exact_out, exact_sums = attention_math.chunked_prefill(q.float(), k.float(), v.float(), None, 128 ** -0.5, window)
    for name, fused, chunked, exact in (("output", out, ref_out, exact_out), ("sums", sums, ref_sums, exact_sums)):
        fused_error = (fused.float() - exact).abs().max().item()
        chunked_error = (chunked.float() - exact).abs().max().item()
        print(f"float16 {name}, window {window}: max error vs float32, fused {fused_error:.2e}, "
              f"chunked {chunked_error:.2e}")
        assert fused_error <= 2 * chunked_error


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_fused_and_chunked_give_the_same_tokens_on_gpu(variant):
    model = tiny_llama(num_heads=4, num_kv_heads=2).cuda()
    ids = torch.randint(0, 128, (1, 300), generator=torch.Generator().manual_seed(0)).cuda()
    runs = []
    for scoring_name in ("chunked", "fused"):
        with vatp.enabled(model, heavy_ratio=0.2, sink_len=2, backend="evict", scoring=scoring_name, **variant):
            runs.append(greedy(model, ids, 8))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-4, atol=1e-4)
