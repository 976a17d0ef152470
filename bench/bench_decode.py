"""Benchmark: what one decode step costs against batch size, for the full cache, mask and evict, every method.

    python bench/bench_decode.py --out bench/results/cpu_decode_tiny                 # tiny GQA Llama, overhead-bound
    python bench/bench_decode.py --model smollm2-135m-instruct --length 1024 --batches 1 8 \
        --out bench/results/cpu_decode_smollm2

For each method (with and without VATP, at ``--heavy_ratio``), backend and batch
size, ``generate`` runs a left-padded batch (prompt lengths spread over
``--spread`` tokens below ``--length``) and every decode-step forward of the
model is measured between a pre-hook and a hook on the model:

* **ops**: aten operators dispatched (a ``TorchDispatchMode`` counter). On a GPU
  each is a kernel launch, so this is the CPU stand-in for launch overhead;
* **syncs**: every time the host waits for tensor data (``host_syncs.HostSyncCounter``):
  the operators that read it (``_local_scalar_dense``, ``nonzero``, ``is_nonzero``,
  ``equal``) or copy host data to the device (``lift_fresh`` from ``torch.tensor(list)``),
  copies between devices (``.to("cpu")`` on a GPU), and the Python-level reads that on
  CPU dispatch no such operator (``.tolist()``, ``.item()``, ``.cpu()``, ``.numpy()``,
  ``bool()``, ``int()``, ``float()``, indexing with a tensor), each counted once;
* **ms/step**: the median time of a decode-step forward, and its ratio to the
  full cache's at the same batch size in the same run (``× full``): wall time, or with
  ``--clock cpu`` the process's CPU time, which other processes on a shared machine
  barely move (use it with ``--threads 1``).

``--vnorms`` runs VATP with each value term (``l1``, the paper's, by default; ``wo_l1`` adds one
product of the new token's value with ``o_proj`` per layer and step), ``--vepsilon`` with an epsilon.

Only the public API is used (``vatp.enable``). Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench_batch import prompts
from bench_kv import load, model_arguments, write_outputs

def measure(model, ids, mask, new_tokens: int, device: str, clock=time.perf_counter) -> dict:
    """Ops, syncs and times of every decode-step forward of one greedy ``generate``."""
    import torch

    from host_syncs import HostSyncCounter

    steps, counting = [], {}

    def before(module, args, kwargs):
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is not None and inputs.shape[1] == 1:  # a decode step
            counting["counter"] = HostSyncCounter().__enter__()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            counting["start"] = clock()

    def after(module, args, kwargs, output):
        counter = counting.pop("counter", None)
        if counter is not None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = clock() - counting.pop("start")
            counter.__exit__(None, None, None)
            steps.append((counter.ops, counter.syncs, seconds))

    hooks = [model.register_forward_pre_hook(before, with_kwargs=True),
             model.register_forward_hook(after, with_kwargs=True)]
    try:
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)
    finally:
        for hook in hooks:
            hook.remove()
        if (counter := counting.pop("counter", None)) is not None:  # a step that raised: put torch.Tensor back
            counter.__exit__(None, None, None)
    steady = steps[1:]  # the first step may still be settling the cache
    return {"ops": max(s[0] for s in steady), "syncs": max(s[1] for s in steady),
            "ms": 1000 * statistics.median(s[2] for s in steady)}


def variants(methods: list[str], apval: list[bool], vnorms: list[str], epsilon: float) -> list[dict]:
    """vatp's settings of each method with and without VATP, where VATP applies (methods whose scores are
    attention), VATP with each value term in ``vnorms`` and ``epsilon``."""
    from vatp.methods import method_class

    plain = [dict(method=m) for m in methods if False in apval]
    weighted = [dict(method=m, apval=True, value_norm=v, epsilon=epsilon) for m in methods for v in vnorms
                if True in apval and method_class(m).scores.is_attention]
    return sorted(plain + weighted, key=lambda v: methods.index(v["method"]))


def run(args) -> list[dict]:
    import vatp

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    model = load(args)
    rows = []
    for batch in args.batches:
        ids, mask = (t.to(args.device) for t in prompts(batch, args.length, args.spread, model.config.vocab_size))
        full = {"ops": 0}
        for _ in range(args.repeats):  # the best of repeats for every timing
            point = measure(model, ids, mask, args.new_tokens, args.device, clock)
            full = point if full["ops"] == 0 or point["ms"] < full["ms"] else full
        rows.append({"variant": "full cache", "backend": "-", "batch": batch, **full, "x_full": 1.0})
        for settings in variants(args.methods, args.apval, args.vnorms, args.vepsilon):
            for backend in args.backends:
                best = None
                with vatp.enabled(model, heavy_ratio=args.heavy_ratio, sink_len=args.sink_len, backend=backend,
                                  **settings) as session:
                    for _ in range(args.repeats):
                        point = measure(model, ids, mask, args.new_tokens, args.device, clock)
                        best = point if best is None or point["ms"] < best["ms"] else best
                rows.append({"variant": session.method.label, "backend": backend, "batch": batch, **best,
                             "x_full": round(best["ms"] / full["ms"], 2)})
                print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], title: str) -> str:
    first = {(r["variant"], r["backend"]): r["ops"] for r in rows if r["batch"] == min(x["batch"] for x in rows)}
    lines = [f"### {title}", "", "| variant | backend | batch | ops/step | ops × batch 1 | syncs/step | ms/step | × full |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["variant"] != "full cache", r["variant"], r["backend"], r["batch"])):
        lines.append(f"| {r['variant']} | {r['backend']} | {r['batch']} | {r['ops']} | "
                     f"{r['ops'] / first[(r['variant'], r['backend'])]:.2f} | {r['syncs']} | {r['ms']:.2f} | "
                     f"{r['x_full']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for key in sorted({(r["variant"], r["backend"]) for r in rows}):
        points = sorted((r["batch"], r["ops"], r["x_full"]) for r in rows if (r["variant"], r["backend"]) == key)
        label = key[0] if key[1] == "-" else f"{key[0]} {key[1]}"
        style = "-" if key[1] in ("-", "evict") else "--"
        axes[0].plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=label)
        axes[1].plot([p[0] for p in points], [p[2] for p in points], style, marker="o", label=label)
    for ax, ylabel in zip(axes, ("aten ops per decode step", "decode step time / full cache's")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
    axes[0].set_ylim(bottom=0)
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    from vatp.names import BACKENDS, METHODS, VALUE_NORMS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p)
    p.set_defaults(shape="tiny-gqa", model=None)  # a --model, even the default one, replaces the tiny shape
    p.add_argument("--length", type=int, default=512, help="the longest prompt of a batch")
    p.add_argument("--spread", type=int, default=64, help="prompt lengths spread over this many tokens")
    p.add_argument("--new_tokens", type=int, default=8)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--apval", type=lambda s: s == "1", nargs="+", default=[False, True],
                   help="1: with VATP, 0: without (default both)")
    p.add_argument("--vnorms", nargs="+", choices=VALUE_NORMS, default=["l1"],
                   help="VATP's value terms to run (default the paper's l1; wo_l1 adds a product with o_proj)")
    p.add_argument("--vepsilon", type=float, default=0.0, help="VATP's epsilon (default 0, the paper's)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--heavy_ratio", type=float, default=0.25)
    p.add_argument("--sink_len", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="time per step: wall or process CPU time")
    p.add_argument("--threads", type=int, default=None, help="torch's intra-op threads (default: torch's)")
    p.add_argument("--out", default="bench/results/cpu_decode_tiny", help="output prefix: OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    if args.model is not None:
        args.shape = None
    args.lengths, args.steps = [args.length], args.new_tokens  # what bench_kv.load sizes a random model by
    rows = run(args)
    title = (f"{args.shape or args.model}, {args.device}, {args.dtype}, prompts {args.length - args.spread}-"
             f"{args.length} tokens, r={args.heavy_ratio}, {args.new_tokens} new tokens, {args.clock} time"
             + (f", {args.threads} thread(s)" if args.threads else ""))
    write_outputs(args.out, title, rows, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
