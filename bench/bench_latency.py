"""Benchmark: python -m vatp.serve under N concurrent clients, pruned against the full cache.

    python bench/bench_latency.py --out bench/results/cpu_latency_smollm2     # the embedded SmolLM2 on CPU

For each server setting (the full cache, then ``--settings``), a server is started on a free port of
127.0.0.1 with one block pool; for each ``--clients`` N, N threads of the ``openai`` client each send
``--requests`` streamed chat completions one after the other (prompts of about ``--words`` words, each with
its own first line, ``--max_tokens`` new tokens). Reports the median and 90th percentile of the time to the
first token and of a request's whole latency, and the generated tokens/s of all clients together; then stops
the server by its process id. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(flags: list[str]):
    """A server on a free port, once it answers: (process, port)."""
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vatp.serve", "--port", str(port), *flags], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    while process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, port
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"the server exited with {process.returncode}: {' '.join(flags)}")


def one_request(client, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds in all, tokens) of one streamed chat completion."""
    start = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first or time.perf_counter() - start, time.perf_counter() - start, tokens


def load(port: int, clients: int, args) -> dict:
    """N clients at once, each sending its requests one after the other."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=3600)
    results, text = [], "The quick brown fox jumps over the lazy dog. " * (args.words // 9)

    def run(c: int):
        for r in range(args.requests):
            prompt = f"Text number {c}.{r}.\n{text}\nSay in one sentence what the text is about."
            results.append(one_request(client, args.model, prompt, args.max_tokens))

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start

    def quantiles(values):  # the median, and the 90th percentile by nearest rank
        values = sorted(values)
        return round(statistics.median(values), 2), round(values[math.ceil(0.9 * len(values)) - 1], 2)

    first, whole = quantiles([r[0] for r in results]), quantiles([r[1] for r in results])
    return {"clients": clients, "requests": len(results), "ttft_median": first[0], "ttft_p90": first[1],
            "latency_median": whole[0], "latency_p90": whole[1],
            "tokens_per_s": round(sum(r[2] for r in results) / seconds, 2)}


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| server | clients | requests | first token s (median / p90) | latency s (median / "
             "p90) | generated tokens/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['ttft_median']:.2f} / {r['ttft_p90']:.2f} "
                     f"| {r['latency_median']:.2f} / {r['latency_p90']:.2f} | {r['tokens_per_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=2, help="requests of each client, one after the other")
    p.add_argument("--words", type=int, default=360, help="about this many words per prompt")
    p.add_argument("--max_tokens", type=int, default=48)
    p.add_argument("--pool", default="--block_size 32 --num_blocks 96 --max_batch_tokens 512",
                   help="the block pool of every server")
    p.add_argument("--settings", nargs="+", default=["--h2o --apval --sink_len 4 --heavy_ratio 0.25"],
                   help="server settings to measure after the full cache (--heavy_ratio 1)")
    p.add_argument("--out", default="bench/results/cpu_latency_smollm2")
    args = p.parse_args(argv)
    rows = []
    for setting in ["--heavy_ratio 1", *args.settings]:
        process, port = start(["--model", args.model, *args.pool.split(), *setting.split()])
        try:
            for clients in args.clients:
                rows.append({"server": setting, **load(port, clients, args)})
                print(rows[-1], flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()
    title = (f"python -m vatp.serve --model {args.model} {args.pool}: prompts of about {args.words} words, "
             f"{args.max_tokens} new tokens, {args.requests} requests per client")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, title))
    print(markdown(rows, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
