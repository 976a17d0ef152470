"""Benchmark: samples/s of ``pred.py --batch_size N`` on the offline suite, pruned against the full cache.

    python bench/bench_pred.py --tokens 1000 --samples 32 --batches 1 8 32 --out bench/results/cpu_pred

Builds the suite's ``--task`` at ``--tokens``, then times whole pred.py runs (model
load excluded: pred.py's own per-dataset seconds) for the full cache and each
``--variant`` at each batch size, each into a fresh folder. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # label -> pred.py flags, at the paper's 50% budget
    "full cache": ["--heavy_ratio", "1.0"],
    "H2O+VATP evict": ["--heavy_ratio", "0.25", "--h2o", "--apval", "--sink_len", "4", "--backend", "evict"],
    "H2O+VATP mask": ["--heavy_ratio", "0.25", "--h2o", "--apval", "--sink_len", "4"],
    "SnapKV+VATP evict": ["--heavy_ratio", "0.25", "--method", "snapkv", "--apval", "--sink_len", "4",
                          "--backend", "evict"],
}
SECONDS = re.compile(r"predictions in .* \(\d+ new on rank 0 of \d+, ([\d.]+) s")


def timed_run(data: Path, task: str, flags: list[str], batch: int, save: Path, threads: int | None) -> float:
    """pred.py's own seconds for predicting ``task`` (the model is loaded before its clock starts)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    done = subprocess.run([sys.executable, "pred.py", "--data_dir", str(data), "--datasets", task, "--save", str(save),
                           "--batch_size", str(batch), *flags], cwd=REPO, capture_output=True, text=True, check=True,
                          env=env)
    return float(SECONDS.search(done.stdout)[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="offline_qa")
    p.add_argument("--tokens", type=int, default=1000)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each pred.py (default: unset)")
    p.add_argument("--out", default="bench/results/cpu_pred")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "vatp.longbench.suite", "--out", str(data), "--tasks", args.task,
                        "--tokens", str(args.tokens), "--samples", str(args.samples)], cwd=REPO, check=True,
                       capture_output=True)
        for batch in args.batches:
            for label in args.variants:
                seconds = timed_run(data, args.task, VARIANTS[label], batch, Path(tmp) / f"{label}-{batch}",
                                    args.threads)
                rows.append({"variant": label, "batch": batch, "seconds": seconds,
                             "samples_per_s": round(args.samples / seconds, 3)})
                print(rows[-1], flush=True)
    full = {r["batch"]: r["samples_per_s"] for r in rows if r["variant"] == "full cache"}
    title = (f"pred.py on {args.task} at ~{args.tokens} tokens, {args.samples} samples"
             + (f", {args.threads} thread(s) each" if args.threads else ""))
    lines = [f"### {title}", "", "| variant | batch | seconds | samples/s | × full cache |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['batch']} | {r['seconds']:.1f} | {r['samples_per_s']} | "
              f"{r['samples_per_s'] / full[r['batch']]:.2f} |" for r in rows if r["batch"] in full]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
