"""Benchmark: one workload through transformers' continuous batching, pruned by vatp against the full cache.

    python bench/bench_serve.py --out bench/results/cpu_serve_smollm2          # embedded SmolLM2 on CPU

The same requests (``--requests`` prompts of ``--length`` random tokens, ``--new_tokens`` each, greedy) go to
one engine with a fixed block pool (``--num_blocks`` of ``--block_size`` tokens): first the full cache
(vatp off: transformers' own ``paged|sdpa``), then vatp's method at each ``--ratios`` budget. Each runs
under the same safe config (``vatp.engine_config``: no block sharing, no async batching, no CUDA graphs).
Per run: the peak number of requests the engine held at once, the forward passes, the wall time and
generated tokens/s, the requests the engine soft-reset (evicted to re-run their prompt and output later,
transformers' answer to a full pool; vatp admits a request only when the pool holds it to its end), and each
request's blocks at every step (the chart). A pool that holds a few whole
requests makes the workload memory-bound. Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``.
"""
from __future__ import annotations

import argparse
import logging
import time

from bench_kv import load, model_arguments, write_outputs


def run(model, args, settings: dict | None) -> dict:
    """One engine run of the whole workload: its figures and each request's blocks after every step."""
    import torch
    from transformers import GenerationConfig

    import vatp

    texts = [torch.randint(3, model.config.vocab_size, (args.length,), generator=torch.Generator().manual_seed(i))
             .tolist() for i in range(args.requests)]
    generation = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    config = vatp.engine_config(block_size=args.block_size, num_blocks=args.num_blocks,
                                max_batch_tokens=args.max_batch_tokens, max_requests_per_batch=args.requests)
    steps, resets = [], set()

    def probe(module, args_, kwargs):  # once per forward: what the engine holds as it runs this step
        scheduler = manager.batch_processor.scheduler
        steps.append({rid: scheduler.cache.blocks_in_use(rid) for rid in scheduler.active_requests})
        resets.update(rid for rid, state in scheduler.active_requests.items() if state._true_initial_tokens)

    if settings is not None:
        vatp.enable(model, **settings)
    hook = model.get_decoder().register_forward_pre_hook(probe, with_kwargs=True)
    try:
        manager = model.init_continuous_batching(generation, config)
        start = time.perf_counter()
        manager.start()
        try:
            manager.add_requests(texts, max_new_tokens=args.new_tokens)
            outputs = [manager.get_result(timeout=3600) for _ in texts]
        finally:
            manager.stop(block=True)
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
        vatp.disable(model)
    failed = [out.request_id for out in outputs if out is None or out.error]
    tokens = sum(len(out.generated_tokens) for out in outputs if out is not None)
    return {"peak_requests": max(len(s) for s in steps), "forwards": len(steps), "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 2), "soft_resets": len(resets), "failed": failed, "blocks": steps}


def markdown(rows: list[dict], title: str) -> str:
    full = rows[0]
    lines = [f"### {title}", "", "| run | peak requests at once | × full | forward passes | seconds | generated tokens/s "
             "| × full | requests soft-reset | failed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['peak_requests']} | {r['peak_requests'] / full['peak_requests']:.2f} | "
                     f"{r['forwards']} | {r['seconds']:.1f} | {r['tokens_per_s']:.2f} | "
                     f"{r['tokens_per_s'] / full['tokens_per_s']:.2f} | {r['soft_resets']} | {len(r['failed'])} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), sharey=True, layout="constrained")
    for ax, row in zip(axes, rows):
        requests = sorted({rid for step in row["blocks"] for rid in step}, key=lambda r: int(r.split("_")[-1]))
        for rid in requests:
            ax.plot([step.get(rid, float("nan")) for step in row["blocks"]], lw=0.9)
        ax.plot([sum(step.values()) for step in row["blocks"]], color="black", lw=1.4, label="all requests")
        ax.set_title(f"{row['run']}: peak {row['peak_requests']} at once", fontsize=9)
        ax.set_xlabel("engine step")
    axes[0].set_ylabel("blocks in use (each request; black: all)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    from vatp.names import METHODS, method_label

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--length", type=int, default=256, help="prompt tokens of each request")
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--block_size", type=int, default=32)
    p.add_argument("--num_blocks", type=int, default=72, help="the pool: 72 blocks of 32 hold 4 whole requests")
    p.add_argument("--max_batch_tokens", type=int, default=512)
    p.add_argument("--method", choices=list(METHODS), default="h2o")
    p.add_argument("--apval", type=int, choices=(0, 1), default=1)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.1], help="0.25: a 50%% budget, 0.1: 20%%")
    p.add_argument("--sink_len", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench/results/cpu_serve_smollm2")
    args = p.parse_args(argv)
    logging.getLogger("ContinuousBatchingLogger").setLevel("ERROR")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.lengths, args.steps = [args.length + args.new_tokens], args.new_tokens  # what load sizes a model by
    model = load(args)
    label = method_label(args.method, bool(args.apval))
    rows = [{"run": "full cache", **run(model, args, None)}]
    for ratio in args.ratios:
        settings = dict(method=args.method, apval=bool(args.apval), heavy_ratio=ratio, sink_len=args.sink_len)
        rows.append({"run": f"{label} {2 * ratio:.0%}", **run(model, args, settings)})
        print(rows[-1]["run"], {k: v for k, v in rows[-1].items() if k != "blocks"}, flush=True)
    title = (f"{args.shape or args.model}, {args.device}, {args.dtype}: {args.requests} requests of {args.length} "
             f"tokens + {args.new_tokens} new, {args.num_blocks} blocks of {args.block_size}, max_batch_tokens "
             f"{args.max_batch_tokens}")
    write_outputs(args.out, title, rows, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
