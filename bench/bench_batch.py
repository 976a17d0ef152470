"""Benchmark: generation throughput against batch size, for the full cache, mask and evict.

    python bench/bench_batch.py --out bench/results/cpu_batch                 # embedded SmolLM2 on CPU
    python bench/bench_batch.py --shape kv-heavy --out bench/results/cpu_batch_kv_heavy

For each mode and batch size, ``generate`` runs a left-padded batch of prompts
whose lengths spread over ``--spread`` tokens below ``--length`` (as pred.py's
length grouping leaves them), with a fixed number of new tokens, after one
untimed warm-up. Reports samples/s and generated tokens/s (the best of
``--repeats``) and the speed-up over batch size 1. Modes: ``full`` (the
model's SDPA), ``mask`` and ``evict`` (H2O+VATP at a 50% budget, bench_kv's settings). Writes
``OUT.json``, ``OUT.md`` and ``OUT.png``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_kv import SETTINGS, load, model_arguments, write_outputs

MODES = ("full", "mask", "evict")


def prompts(batch: int, length: int, spread: int, vocab: int):
    """(batch, length) token ids and mask: row ``b`` has ``length - b * spread // batch`` real tokens, left-padded."""
    import torch

    ids = torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, : row * spread // batch] = 0
    return ids, mask


def throughput(model, mode: str, batch: int, args) -> dict:
    """Best-of-``repeats`` wall time of one batched ``generate``, as samples/s and tokens/s."""
    import torch

    import vatp

    ids, mask = prompts(batch, args.length, args.spread, model.config.vocab_size)
    ids, mask = ids.to(args.device), mask.to(args.device)
    if mode != "full":
        vatp.enable(model, **SETTINGS, backend=mode)
    times = []
    try:
        for _ in range(args.repeats + 1):  # the first is a warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    finally:
        vatp.disable(model)
    best = min(times[1:])
    return {"mode": mode, "batch": batch, "seconds": round(best, 3), "samples_per_s": round(batch / best, 3),
            "tokens_per_s": round(batch * args.new_tokens / best, 2)}


def markdown(rows: list[dict], title: str) -> str:
    single = {r["mode"]: r["tokens_per_s"] for r in rows if r["batch"] == 1}
    lines = [f"### {title}", "", "| mode | batch | seconds | samples/s | tokens/s | × batch 1 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['batch']} | {r['seconds']} | {r['samples_per_s']} | {r['tokens_per_s']} | "
                     f"{r['tokens_per_s'] / single[r['mode']]:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    for mode in MODES:
        points = [(r["batch"], r["tokens_per_s"]) for r in rows if r["mode"] == mode]
        if points:
            ax.plot(*zip(*points), marker="o", label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("generated tokens/s")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p)
    p.add_argument("--length", type=int, default=1024, help="the longest prompt of a batch")
    p.add_argument("--spread", type=int, default=64, help="prompt lengths spread over this many tokens")
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench/results/cpu_batch", help="output prefix: OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    args.lengths, args.steps = [args.length], args.new_tokens  # what bench_kv.load sizes a random model by
    model = load(args)
    rows = [throughput(model, mode, batch, args) for mode in args.modes for batch in args.batches]
    title = (f"{args.shape or args.model}, {args.device}, {args.dtype}, prompts {args.length - args.spread}-"
             f"{args.length} tokens, {args.new_tokens} new tokens")
    write_outputs(args.out, title, rows, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
