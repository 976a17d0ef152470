"""Benchmark: prefill time and peak memory, decode ms/step and KV bytes, for full cache, mask and evict.

    python bench/bench_kv.py --out bench/results/cpu                       # embedded SmolLM2 on CPU
    python bench/bench_kv.py --shape llama2-7b --device cuda --dtype float16 \
        --lengths 4096 8192 16384 32768 --out bench/results/gpu            # random 7B-shaped model

Peak memory is each point's own: on CPU every (mode, length) point runs in
a fresh process and counts the rise of the peak RSS over the loaded model;
on CUDA each mode runs in a fresh process, builds the model once and counts
max_memory_allocated above the weights, reset before each length (a length
out of GPU memory is recorded as failed, and the longer ones still run).
Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``. Modes: ``full`` (the model's SDPA, no pruning), ``mask`` (the
paper's way: eager L x L scoring, pruned tokens masked), ``evict`` (scoring
without the L x L matrix, ``--scoring chunked``, ``window`` or ``fused``; pruned tokens
removed from the cache), and two compiled decoders: ``static`` (the full cache in
transformers' StaticCache, its decode step under ``torch.compile``) and
``evict-compiled`` (evict with vatp's decode step under ``torch.compile``); both
use ``mode="reduce-overhead"`` (CUDA graphs) on CUDA and ``"default"`` elsewhere,
and every mode decodes ``--warmup`` untimed steps (compilation) before the timed ones.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from vatp.names import DTYPE_NAMES, METHODS, method_label  # no torch import

MODES = ("full", "mask", "evict", "static", "evict-compiled")
SHAPES = {"llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32000),
          # small weights, MHA: decode is bound by reading the KV cache, as the 7B shape is at 32k on a GPU
          "kv-heavy": dict(hidden_size=1024, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=16,
                           num_key_value_heads=16, vocab_size=1024),
          # overhead-bound decode steps (the fast-decode issue's measurement): 8 query / 2 KV heads
          "tiny-gqa": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                           num_key_value_heads=2, vocab_size=512),
          # a smoke-test size for CI
          "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=256)}
SETTINGS = dict(heavy_ratio=0.25, h2o=True, apval=True, sink_len=4)  # the paper's 50% budget


def load(args):
    import torch

    if args.shape:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=max(args.lengths) + args.steps + 8)
        with torch.device(args.device):
            model = LlamaForCausalLM(config).to(getattr(torch, args.dtype))
        return model.eval()
    from vatp.longbench.data import resolve_model
    from vatp.longbench.models import load_model_and_tokenizer

    return load_model_and_tokenizer(resolve_model(args.model)[0], args.dtype, args.device)[0]


def settings_of(method: str, heavy_ratio: float = SETTINGS["heavy_ratio"], adakv: bool = False) -> dict:
    """H2O+VATP at the paper's 50% budget, or another method with VATP, at ``heavy_ratio``, with AdaKV or not."""
    return {**{k: v for k, v in SETTINGS.items() if k != "h2o"}, "method": method, "heavy_ratio": heavy_ratio,
            "adakv": adakv}


def compile_mode(device: str) -> str:
    """CUDA graphs on a GPU; elsewhere the default compile (no graphs to capture)."""
    return "reduce-overhead" if device.startswith("cuda") else "default"


def memory_now(device) -> int:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args, mode: str, lengths: list[int]) -> list[dict]:
    """Points of one mode, in this process and on one model: prefill, then ``steps`` greedy decode steps.

    A length that runs out of GPU memory is a point with an ``error``; the longer lengths still run.
    """
    import torch

    import vatp

    model = load(args)
    if mode in ("mask", "evict", "evict-compiled"):
        compiled = compile_mode(args.device) if mode == "evict-compiled" else None
        vatp.enable(model, backend="mask" if mode == "mask" else "evict", compile=compiled,
                    scoring="eager" if mode == "mask" else args.scoring,
                    **settings_of(args.method, args.heavy_ratio, args.adakv))
    points = []
    for length in lengths:
        try:
            points.append(measure_one(args, model, mode, length))
        except torch.cuda.OutOfMemoryError:
            points.append(dict(mode=mode, length=length, error="out of GPU memory"))
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return points


def measure_one(args, model, mode: str, length: int) -> dict:
    import torch

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ids = torch.randint(10, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(args.device)
    with torch.no_grad():
        model(ids[:, :256])  # warm-up kernels and allocator (long enough for every method's budget)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = memory_now(args.device)
        cache, step = None, model
        if mode == "static":
            from transformers import StaticCache

            cache = StaticCache(config=model.config, max_cache_len=length + args.warmup + args.steps + 1)
            step = torch.compile(model, mode=compile_mode(args.device), fullgraph=True)
        sync()
        start = time.perf_counter()
        out = model(ids, past_key_values=cache, logits_to_keep=1)
        sync()
        prefill_s = time.perf_counter() - start
        peak = memory_now(args.device) - base
        token = out.logits[:, -1:].argmax(-1)
        cache = out.past_key_values
        for position in range(length, length + args.warmup + args.steps):
            if position == length + args.warmup:
                sync()
                start = time.perf_counter()
            out = step(token, past_key_values=cache, position_ids=torch.tensor([[position]], device=args.device),
                       logits_to_keep=1)
            token = out.logits[:, -1:].argmax(-1)
        sync()
        decode_ms = 1000 * (time.perf_counter() - start) / args.steps
    from vatp.backends import held_bytes

    kv_bytes = sum(held_bytes(layer) for layer in cache.layers)
    # Slots held per KV head of a layer, evict's slot for the next token included; with AdaKV the heads hold
    # their own budgets one after the other, so this is their mean.
    layer = cache.layers[0]
    slot_bytes = 2 * layer.keys.shape[-1] * layer.keys.element_size() * model.config.num_key_value_heads
    kv_tokens = round(kv_bytes / (slot_bytes * len(cache.layers)), 1)
    return dict(mode=mode, length=length, prefill_s=prefill_s, prefill_peak_gib=peak / 2**30,
                decode_ms=decode_ms, kv_bytes=kv_bytes, kv_tokens=kv_tokens)


def ratios(points: list[dict]) -> list[dict]:
    """Each pruned mode relative to the full cache at the same length, from the same run."""
    full = {p["length"]: p for p in points if p["mode"] == "full"}
    rows = []
    for p in points:
        f = full.get(p["length"])
        rows.append({**p, **({} if f is None else {
            "prefill_time_x": p["prefill_s"] / f["prefill_s"],
            "prefill_mem_x": p["prefill_peak_gib"] / f["prefill_peak_gib"] if f["prefill_peak_gib"] else None,
            "decode_x": p["decode_ms"] / f["decode_ms"], "kv_x": p["kv_bytes"] / f["kv_bytes"]})})
    return rows


def markdown(rows: list[dict], title: str) -> str:
    head = ("| length | mode | prefill s | prefill peak GiB | decode ms/step | KV MiB (slots) | "
            "prefill time × | prefill mem × | decode × | KV × |\n|---|---|---|---|---|---|---|---|---|---|\n")
    fmt = lambda v, spec: "" if v is None else format(v, spec)
    body = "".join(
        f"| {r['length']} | {r['mode']} | {r['prefill_s']:.3f} | {r['prefill_peak_gib']:.3f} | {r['decode_ms']:.1f} | "
        f"{r['kv_bytes'] / 2**20:.1f} ({r['kv_tokens']}) | {fmt(r.get('prefill_time_x'), '.2f')} | "
        f"{fmt(r.get('prefill_mem_x'), '.2f')} | {fmt(r.get('decode_x'), '.2f')} | {fmt(r.get('kv_x'), '.3f')} |\n"
        for r in sorted(rows, key=lambda r: (r["length"], MODES.index(r["mode"]))))
    return f"### {title}\n\n{head}{body}"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ("prefill_s", "prefill_peak_gib", "decode_ms"),
                              ("prefill seconds", "prefill peak GiB", "decode ms / step")):
        for mode in MODES:
            pts = sorted((r["length"], r[key]) for r in rows if r["mode"] == mode)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(prefix: str, title: str, rows: list[dict], markdown, plot) -> None:
    """``PREFIX.json`` (the title and rows), ``PREFIX.md`` (``markdown(rows, title)``, also printed) and
    ``PREFIX.png`` (``plot(rows, path, title)``)."""
    out = Path(prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, title))
    plot(rows, out.with_suffix(".png"), title)
    print(markdown(rows, title))


def model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that say which model to benchmark, where and in which dtype (shared with bench_batch.py)."""
    p.add_argument("--model", default="smollm2-135m-instruct", help="a config/model2path.json name")
    p.add_argument("--shape", choices=sorted(SHAPES), help="random weights of this shape instead of --model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--modes", nargs="+", choices=MODES, default=["full", "mask", "evict"])
    p.add_argument("--scoring", choices=["chunked", "window", "fused"], default="chunked", help="evict's prefill scoring")
    p.add_argument("--method", choices=list(METHODS), default="h2o", help="with VATP")
    p.add_argument("--heavy_ratio", type=float, default=SETTINGS["heavy_ratio"],
                   help="the budget ratio (default 0.25, the paper's 50%% budget)")
    p.add_argument("--adakv", action="store_true", help="AdaKV's head budgets")
    p.add_argument("--steps", type=int, default=16, help="decode steps timed after the prefill")
    p.add_argument("--warmup", type=int, default=3, help="untimed decode steps first (compilation, CUDA graphs)")
    p.add_argument("--out", default="bench/results/cpu", help="output prefix: OUT.json, OUT.md, OUT.png")
    p.add_argument("--point", nargs="+", metavar="MODE LENGTH", help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    if args.point:
        for point in measure(args, args.point[0], [int(n) for n in args.point[1:]]):
            print(json.dumps(point), flush=True)
        return 0
    # A child process per mode on CUDA, whose peak counter is reset for each point, so that the 7B-shaped
    # model is built once per mode; elsewhere one per point, as memory_now's peak RSS never falls back.
    groups = [args.lengths] if args.device.startswith("cuda") else [[n] for n in args.lengths]
    points = []
    for lengths in groups:
        for mode in args.modes:
            own = sys.argv[1:] if argv is None else argv
            child = [sys.executable, __file__, *own, "--point", mode, *map(str, lengths)]
            done = subprocess.run(child, capture_output=True, text=True)
            found = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            for point in found:
                print(f"{mode:>5} {point['length']:>6}: {point}", flush=True)
            if done.returncode:
                print(f"{mode}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                found += [dict(mode=mode, length=n, error=error) for n in lengths[len(found):]]
            points += found
    ok = [pt for pt in points if "error" not in pt]
    rows = ratios(ok)
    label = method_label(args.method, True) + ("+AdaKV" if args.adakv else "")
    title = (f"{args.shape or args.model}, {args.dtype}, {args.device}, {label} heavy_ratio {args.heavy_ratio} "
             f"({2 * args.heavy_ratio:.0%} budget), evict scoring {args.scoring}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"title": title,
                                                    "settings": settings_of(args.method, args.heavy_ratio, args.adakv),
                                                    "steps": args.steps,
                                                    "points": rows, "failed": [pt for pt in points if "error" in pt]},
                                                   indent=1))
    table = markdown(rows, title)
    out.with_suffix(".md").write_text(table)
    if rows:
        plot(rows, out.with_suffix(".png"), title)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
