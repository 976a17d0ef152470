"""How VATP's kept set differs from its baseline's, after the prompt (the diagnostic behind RESULTS.md).

    python scripts/kept_sets.py --data study_out/data_1500 --tasks offline_code offline_qa offline_retrieval

For each sample, it runs the prompt once per method (mask backend, so the
decision over every prompt token is visible) and compares the kept-token
masks of every layer and KV head: their overlap (Jaccard), and the share
kept of the first ``--first`` tokens (where VATP's sinks are) and of the last
``--last`` tokens (the question, or the code line to continue). Prints a
markdown table of means over samples, layers and heads.
"""
from __future__ import annotations

import argparse
import sys

import torch

import vatp
from vatp.longbench.data import load_samples, read_config, resolve_model
from vatp.longbench.prompts import encode_prompt
from vatp.longbench.models import load_model_and_tokenizer

PAIRS = {  # baseline label -> (baseline settings, VATP settings)
    "H2O": (dict(h2o=True), dict(h2o=True, apval=True)),
    "Scissorhands": (dict(h2o=False), dict(h2o=False, apval=True)),
}


def kept_after_prompt(model, ids: torch.Tensor, heavy_ratio: float, **settings) -> torch.Tensor:
    """(layers, kv_heads, L) bool: which prompt tokens each layer keeps for the first generated token."""
    with vatp.enabled(model, heavy_ratio=heavy_ratio, **settings) as session, torch.no_grad():
        model(ids)
        return torch.stack([session.layers[i].token_mask()[:, :ids.shape[1]] for i in sorted(session.layers)])


def compare(base: torch.Tensor, other: torch.Tensor, first: int, last: int) -> dict:
    """Overlap of two kept masks (layers, kv_heads, L), and the share each keeps at the ends."""
    share = lambda keep, part: keep[..., part].float().mean().item()
    return {"jaccard": ((base & other).sum() / (base | other).sum()).item(),
            "first_base": share(base, slice(0, first)), "first_vatp": share(other, slice(0, first)),
            "last_base": share(base, slice(-last, None)), "last_vatp": share(other, slice(-last, None))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an offline-suite folder (python -m vatp.longbench.suite)")
    p.add_argument("--tasks", nargs="+", default=["offline_code", "offline_qa", "offline_retrieval"])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.5], help="KV budget, share of the prompt")
    p.add_argument("--sink_len", type=int, default=20)
    p.add_argument("--first", type=int, default=20, help="leading tokens to report on")
    p.add_argument("--last", type=int, default=100, help="trailing tokens to report on")
    args = p.parse_args(argv)
    model, tokenizer = load_model_and_tokenizer(resolve_model(args.model)[0], "float32", "cpu")
    prompts = read_config("dataset2prompt")
    max_length = read_config("model2maxlen")[args.model]
    print(f"| task | budget | baseline | Jaccard | first {args.first} kept: base / VATP | "
          f"last {args.last} kept: base / VATP |\n|---|---|---|---|---|---|")
    for task in args.tasks:
        samples = load_samples(task, False, args.data)
        prompts_ids = [encode_prompt(tokenizer, s, task, prompts[task], args.model, max_length)
                       for s in samples]
        for budget in args.budgets:
            for label, (base, with_vatp) in PAIRS.items():
                rows = [compare(kept_after_prompt(model, ids, budget / 2, **base),
                                kept_after_prompt(model, ids, budget / 2, sink_len=args.sink_len, **with_vatp),
                                args.first, args.last) for ids in prompts_ids]
                m = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
                print(f"| {task} | {round(100 * budget)}% | {label} | {m['jaccard']:.2f} | "
                      f"{m['first_base']:.2f} / {m['first_vatp']:.2f} | {m['last_base']:.2f} / {m['last_vatp']:.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
