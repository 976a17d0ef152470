"""The benchmark runs end to end at a CI-friendly size and reports the KV it really holds."""
import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # runs subprocesses


def test_bench_smoke_reports_half_the_kv_for_evict(tmp_path):
    out = tmp_path / "bench"
    subprocess.run([sys.executable, "bench/bench_kv.py", "--shape", "tiny", "--lengths", "128", "--steps", "3", "--warmup", "0",
                    "--out", str(out)], check=True, cwd=REPO, capture_output=True)
    result = json.loads(out.with_suffix(".json").read_text())
    points = {p["mode"]: p for p in result["points"]}
    assert set(points) == {"full", "mask", "evict"} and not result["failed"]
    assert points["full"]["kv_tokens"] == points["mask"]["kv_tokens"] == 128 + 3  # masking frees nothing
    # 2 * int(0.25 * 128) = 64, the 50% budget, plus the slot the next token overwrites
    assert points["evict"]["kv_tokens"] == 64 + 1
    assert points["evict"]["kv_x"] == 65 / 131
    assert out.with_suffix(".md").read_text().count("\n| 128 |") == 3
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_batch_bench_smoke_reports_every_mode_and_batch_size(tmp_path):
    out = tmp_path / "batch"
    subprocess.run([sys.executable, "bench/bench_batch.py", "--shape", "tiny", "--length", "96", "--spread", "32",
                    "--new_tokens", "3", "--batches", "1", "2", "--repeats", "1", "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == [(m, b) for m in ("full", "mask", "evict") for b in (1, 2)]
    assert all(r["tokens_per_s"] == pytest.approx(3 * r["samples_per_s"], rel=1e-3) for r in rows)  # 3 tokens a sample
    assert out.with_suffix(".md").read_text().count("\n| evict |") == 2 and out.with_suffix(".png").is_file()


def test_decode_bench_counts_ops_and_syncs_per_step(tmp_path):
    out = tmp_path / "decode"
    subprocess.run([sys.executable, "bench/bench_decode.py", "--shape", "tiny", "--length", "96", "--spread", "16",
                    "--new_tokens", "3", "--batches", "1", "2", "--methods", "h2o", "snapkv", "--apval", "1",
                    "--vnorms", "l1", "wo_l1", "--repeats", "1", "--out", str(out)], check=True, cwd=REPO,
                   capture_output=True)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert len(rows) == 2 * (1 + 2 * 2 * 2)  # per batch size: the full cache, 2 methods x 2 value terms x 2 backends
    ops = {(r["variant"], r["backend"], r["batch"]): r["ops"] for r in rows}
    for variant in ("H2O+VATP", "SnapKV+VATP", "H2O+VATP[wo_l1]", "SnapKV+VATP[wo_l1]"):
        for backend in ("mask", "evict"):
            assert ops[(variant, backend, 2)] <= 1.25 * ops[(variant, backend, 1)]  # no op per row
    for backend in ("mask", "evict"):  # the projected norm: a few ops per layer where decode steps decide
        assert ops[("SnapKV+VATP[wo_l1]", backend, 1)] == ops[("SnapKV+VATP", backend, 1)]
        assert 0 < ops[("H2O+VATP[wo_l1]", backend, 1)] - ops[("H2O+VATP", backend, 1)] <= 0.1 * ops[
            ("H2O+VATP", backend, 1)]
    assert all(r["syncs"] <= 1 for r in rows)  # the full cache's one (transformers'), no more
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_serve_bench_runs_the_workload_whole_and_pruned_on_one_pool(tmp_path):
    out = tmp_path / "serve"
    subprocess.run([sys.executable, "bench/bench_serve.py", "--shape", "tiny", "--requests", "6", "--length", "96",
                    "--new_tokens", "24", "--block_size", "16", "--num_blocks", "24", "--ratios", "0.1",
                    "--out", str(out)], check=True, cwd=REPO, capture_output=True)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["run"] for r in rows] == ["full cache", "H2O+VATP 20%"]
    full, pruned = rows
    assert not full["failed"] and not pruned["failed"] and pruned["soft_resets"] == 0
    assert pruned["peak_requests"] > full["peak_requests"]  # the blocks pruning frees hold more requests
    assert len(pruned["blocks"]) == pruned["forwards"] and out.with_suffix(".png").stat().st_size > 10_000
