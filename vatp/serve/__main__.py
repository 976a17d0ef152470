"""python -m vatp.serve: an OpenAI-compatible server whose requests are pruned by vatp inside continuous batching.

    python -m vatp.serve                                    # the embedded SmolLM2, H2O+VATP at 50%, 127.0.0.1:8000
    python -m vatp.serve --model llama2-7b-chat-4k --method snapkv --apval --sink_len 20 --heavy_ratio 0.25 \\
        --device cuda --num_blocks 2048

``/v1/chat/completions`` (streamed or not) and ``/v1/models``, as ``transformers serve`` offers them (its app,
reused). The method flags are pred.py's; ``--heavy_ratio 1`` serves the full cache. A request vatp cannot serve
gets an HTTP 400 that says why, and the server goes on serving the others. Ctrl-C or SIGTERM stop it.
Sampling settings are shared by every request, from the first (transformers' engine): greedy unless the first
request asks for a temperature.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from vatp import names
from vatp.longbench.data import UsageError
from vatp.refusals import UnsupportedError


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m vatp.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="a name in config/model2path.json, or a local model folder (default: the embedded SmolLM2)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    method = p.add_argument_group("pruning, as pred.py's flags")
    method.add_argument("--method", choices=list(names.METHODS), default=None,
                        help="the method (default: H2O with --h2o, else the paper's Scissorhands)")
    method.add_argument("--h2o", action="store_true", help="H2O scoring (the paper's flag)")
    method.add_argument("--heavy_ratio", type=float, default=0.25,
                        help="budget ratio in (0, 1]: 0.25 is a 50%% budget (default), 1.0 serves the full cache")
    method.add_argument("--apval", action="store_true", help="VATP: weight scores by value L1 norms, keep the sinks")
    method.add_argument("--sink_len", type=int, default=0, help="leading tokens always kept (with --apval)")
    method.add_argument("--vnorm", choices=names.VALUE_NORMS, default="l1",
                        help="VATP's value term (with --apval): l1 (the paper's), l2 or wo_l1 (||W_o v||_1)")
    method.add_argument("--vepsilon", type=float, default=0.0, help="VATP scores (s + EPS) * norm (with --apval)")
    method.add_argument("--vstage", type=float, default=0.0,
                        help="the share of the budget kept by the method's score alone (with --apval)")
    method.add_argument("--adakv", action="store_true", help="AdaKV's head budgets (refused by the engine)")
    pool = p.add_argument_group("the block pool of the engine")
    pool.add_argument("--block_size", type=int, default=32, help="tokens per block")
    pool.add_argument("--num_blocks", type=int, default=512, help="blocks in the pool")
    pool.add_argument("--max_batch_tokens", type=int, default=512, help="query tokens per engine step")
    pool.add_argument("--max_requests", type=int, default=32, help="requests per engine step")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=names.DTYPE_NAMES, default=None, help="default: the checkpoint's own")
    return p.parse_args(argv)


def load(args):
    """The model (greedy by default) and its tokenizer: a config name, or a local folder."""
    from vatp.longbench.data import resolve_model
    from vatp.longbench.models import default_dtype, load_model_and_tokenizer, load_model_config

    path = args.model if Path(args.model).expanduser().is_dir() else resolve_model(args.model)[0]
    dtype = args.dtype or default_dtype(args.model, load_model_config(path, False))
    model, tokenizer = load_model_and_tokenizer(path, dtype, args.device)
    model.generation_config.do_sample = False
    return model, tokenizer


def serve(args) -> int:
    import uvicorn

    import vatp
    from vatp import engine
    from vatp.serve.app import build_app

    if not 0.0 < args.heavy_ratio <= 1.0:
        raise UsageError(f"--heavy_ratio must be in (0, 1], got {args.heavy_ratio}")
    if args.h2o and args.method not in (None, "h2o"):
        raise UsageError(f"--h2o picks H2O but --method says {args.method}; give one of them")
    settings = dict(method=args.method or names.paper_method(args.h2o), apval=args.apval, adakv=args.adakv,
                    sink_len=args.sink_len, heavy_ratio=args.heavy_ratio, value_norm=args.vnorm,
                    epsilon=args.vepsilon, two_stage=args.vstage)
    try:
        config = None if args.heavy_ratio >= 1.0 else vatp.VatpConfig(**settings)
    except ValueError as err:
        raise UsageError(str(err)) from None
    cb_config = vatp.engine_config(block_size=args.block_size, num_blocks=args.num_blocks,
                                   max_batch_tokens=args.max_batch_tokens, max_requests_per_batch=args.max_requests)
    model, tokenizer = load(args)
    session = None if config is None else vatp.enable(model, config)
    try:
        if session is not None:  # refused now, not at the first request
            engine.check_servable(model, session, model.generation_config)

        def fits(prompt_tokens: int, new_tokens: int | None) -> str | None:
            need = (session.engine.blocks_needed(prompt_tokens, new_tokens, args.block_size) if session is not None
                    else (prompt_tokens + (new_tokens or 0) + 1) // args.block_size + 1)
            if need <= args.num_blocks:
                return None
            return (f"a prompt of {prompt_tokens} tokens and up to {new_tokens} new tokens needs {need} blocks of "
                    f"{args.block_size} tokens and the server holds {args.num_blocks}: send a shorter prompt or a "
                    "lower max_tokens (or start the server with more --num_blocks)")

        app, state = build_app(model, tokenizer, args.model, cb_config, fits)
        what = "the full cache" if config is None else describe(config)
        print(f"vatp.serve: {args.model} ({what}) on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
        # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again: end here instead.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")).run()
        finally:
            state.shutdown()
    finally:
        if session is not None:
            vatp.disable(model)
    return 0


def describe(config) -> str:
    label = config.scorer.label + ("+AdaKV" if config.adakv else "")
    return f"{label}, heavy_ratio {config.heavy_ratio}, sink_len {config.sinks}"


def main(argv=None) -> int:
    """0 once stopped (Ctrl-C or SIGTERM); 2 with one ``vatp.serve: error:`` line for what cannot be served."""
    from vatp.longbench.models import ModelLoadError

    args = parse_args(argv)
    logging.getLogger("ContinuousBatchingLogger").setLevel("ERROR")
    try:
        return serve(args)
    except (UsageError, UnsupportedError, ModelLoadError) as err:
        print(f"vatp.serve: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
