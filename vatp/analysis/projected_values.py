"""The value as cached against the value as the layer's output sees it, per layer: ``||v||_1`` against ``||W_o v||_1``.

    python -m vatp.analysis.projected_values --model smollm2-135m-instruct --prompts 3 --tokens 1000 --out DIR

VATP (Guo et al., EMNLP 2024) weights a token's attention by ``||v||_1``, its value vector as cached;
CriticalKV (Feng et al., 2025) by ``||W_o^h v||_1``, the value projected through the query head's slice of
``o_proj`` (averaged over the GQA group): what the token can change in the layer's output. ``o_proj`` mixes
and rescales the value's coordinates, so the two can rank tokens differently. For each layer, over the tokens
of a few offline-suite prompts (as :mod:`vatp.analysis.value_attention` builds them), this module measures:

* the Spearman rank correlation of the two terms within each (prompt, KV head), over all tokens and over
  the tokens after the first ``max(sink_lens)``;
* the first ``k`` tokens' share of each term's total (the sinks' share);
* how much of what H2O+VATP's prefill score keeps with each term agrees: of the tokens ranked in the top
  ``budget`` share by attention x ``||v||_1``, the fraction also there by attention x ``||W_o v||_1``.

It writes ``projected_values.png``, ``projected_values.json`` and ``projected_values.md`` to ``--out``.
Shapes: per prompt, each measured tensor is (layers, kv_heads, L).
"""
from __future__ import annotations

import json
import shlex
import sys
import time

import numpy as np
import torch
from matplotlib.figure import Figure

from . import value_attention
from .output import save_figure, write_text_file

TERMS = ("l1", "wo_l1")
TERM_LABELS = {"l1": "‖v‖₁", "wo_l1": "‖W_o v‖₁"}
BUDGETS = (0.2, 0.5)  # shares of the prompt kept, as the studies' budgets
TERM_STYLES = {"attention": ":", "l1": "--", "wo_l1": "-"}


def measure_terms(model, input_ids: torch.Tensor, layers: list[int]) -> dict[str, torch.Tensor]:
    """The prompt's accumulated attention and both value terms: {"attention", "l1", "wo_l1"} -> (layers, kv_heads, L)
    float32 (two forwards of the model, eager attention)."""
    scores, l1 = value_attention.measure(model, input_ids, layers, "l1")
    _, projected = value_attention.measure(model, input_ids, layers, "wo_l1")
    return {"attention": scores, "l1": l1, "wo_l1": projected}


def kept_agreement(scores: torch.Tensor, first: torch.Tensor, second: torch.Tensor, share: float) -> float:
    """Of the ``int(share * L)`` best tokens by ``scores * first``, the fraction also best by ``scores * second``,
    averaged over KV heads: (kv_heads, L) each -> a number in [0, 1]."""
    k = max(int(share * scores.shape[-1]), 1)
    a = (scores * first).topk(k, dim=-1).indices
    b = (scores * second).topk(k, dim=-1).indices
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)]))


def layer_stats(measured: list[dict], i: int, sink_lens=value_attention.SINK_LENS) -> dict:
    """Layer index ``i``'s numbers over prompts (each a :func:`measure_terms` result)."""
    skip = max(sink_lens)
    pairs = [(m["l1"][i, h], m["wo_l1"][i, h]) for m in measured for h in range(m["l1"].shape[1])]
    share = {str(k): {term: float(torch.cat([value_attention.first_share(m[term][i], k) for m in measured]).mean())
                      for term in ("attention", *TERMS)} for k in sink_lens}
    return {"spearman": float(np.mean([value_attention.spearman(a, b) for a, b in pairs])),
            "spearman_after_sinks": float(np.mean([value_attention.spearman(a[skip:], b[skip:]) for a, b in pairs])),
            "share": share,
            "kept_agreement": {str(b): float(np.mean([kept_agreement(m["attention"][i], m["l1"][i], m["wo_l1"][i], b)
                                                      for m in measured])) for b in BUDGETS}}


def figure(layers: list[int], stats: list[dict], title: str = "") -> Figure:
    """Per layer: the two terms' rank correlation, the first tokens' shares, and the kept sets' agreement."""
    fig = Figure(figsize=(15, 3.8), layout="constrained")
    rho_ax, share_ax, kept_ax = fig.subplots(1, 3)
    rho_ax.plot(layers, [s["spearman"] for s in stats], "-", marker=".", label="all tokens")
    rho_ax.plot(layers, [s["spearman_after_sinks"] for s in stats], "--", marker=".",
                label=f"after the first {max(int(k) for k in stats[0]['share'])}")
    lowest = min(min(s["spearman"], s["spearman_after_sinks"]) for s in stats)
    rho_ax.set(xlabel="layer", ylabel="Spearman ρ", ylim=(min(lowest, 0) - 0.05, 1.02), title="ρ(‖v‖₁, ‖W_o v‖₁)")
    rho_ax.axhline(0, color="0.6", lw=0.8)
    rho_ax.legend(fontsize=7)
    k = min(stats[0]["share"], key=int)
    for term, style in TERM_STYLES.items():
        share_ax.plot(layers, [100 * s["share"][k][term] for s in stats], style, marker=".",
                      label=TERM_LABELS.get(term, "accumulated attention"))
    share_ax.set(xlabel="layer", ylabel="% of the layer's total (log scale)", yscale="log",
                 title=f"The first {k} tokens' share")
    share_ax.legend(fontsize=7)
    for budget in BUDGETS:
        kept_ax.plot(layers, [100 * s["kept_agreement"][str(budget)] for s in stats], "-", marker=".",
                     label=f"{round(100 * budget)}% of the prompt kept")
    kept_ax.set(xlabel="layer", ylabel="% of the kept tokens", ylim=(0, 100),
                title="kept by attention × ‖v‖₁ and × ‖W_o v‖₁ alike")
    kept_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def markdown(report: dict) -> str:
    """What was run, the ranges over layers, a per-layer table."""
    stats, ks = report["layers"], list(report["layers"][0]["share"])
    prompts = ", ".join(f"{p['task']}#{p['sample']} ({p['tokens']} tokens)" for p in report["prompts"])

    def spread(values, scale=1.0, digits=2):
        values = [scale * v for v in values]
        return f"{min(values):.{digits}f} to {max(values):.{digits}f} (mean {np.mean(values):.{digits}f})"

    lines = [f"# ‖v‖₁ against ‖W_o v‖₁ per layer: {report['model']}", "",
             f"Command: `{report['command']}` ({report['seconds']:.0f} s on {report['device']}).", "",
             f"Prompts: {prompts}. ρ: the Spearman correlation of the two value terms within each (prompt, KV head), "
             "averaged; 'after' leaves out the first "
             f"{max(int(k) for k in ks)} tokens. Shares: of the layer's total, averaged over prompts and KV heads. "
             "Kept: of the tokens in the top share by accumulated attention × ‖v‖₁ (H2O+VATP's prefill score, "
             "no sinks forced), the % also there by attention × ‖W_o v‖₁.", "",
             f"- ρ across layers: {spread([s['spearman'] for s in stats])}; after the first tokens: "
             f"{spread([s['spearman_after_sinks'] for s in stats])}."]
    for k in ks:
        lines.append(f"- First {k} tokens: " + "; ".join(
            f"{TERM_LABELS.get(t, 'attention')} {spread([s['share'][k][t] for s in stats], 100, 1)}%"
            for t in ("attention", *TERMS)) + ".")
    for b in report["layers"][0]["kept_agreement"]:
        lines.append(f"- Kept at {round(100 * float(b))}%: "
                     f"{spread([s['kept_agreement'][b] for s in stats], 100, 1)}% in common.")
    header = ["layer", "ρ", "ρ after"] + [f"first {k} {TERM_LABELS.get(t, 'attn')} %" for k in ks
                                         for t in ("attention", *TERMS)]
    header += [f"kept in common at {round(100 * float(b))}%" for b in stats[0]["kept_agreement"]]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for layer, s in zip(report["layer_ids"], stats):
        cells = [str(layer), f"{s['spearman']:.2f}", f"{s['spearman_after_sinks']:.2f}"]
        cells += [f"{100 * s['share'][k][t]:.1f}" for k in ks for t in ("attention", *TERMS)]
        cells += [f"{100 * v:.1f}" for v in s["kept_agreement"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Figure: `projected_values.png`.", ""])


def main(argv=None) -> int:
    from ..longbench.data import resolve_model
    from ..longbench.models import ModelLoadError, load_model_and_tokenizer

    args = value_attention.parse_args(argv, prog="python -m vatp.analysis.projected_values",
                                      description="Per layer: ||v||_1 against ||W_o v||_1 on offline-suite prompts "
                                                  "(rank correlation, first tokens' shares, kept sets).")
    argv = sys.argv[1:] if argv is None else argv
    started = time.perf_counter()
    try:
        path, max_length = resolve_model(args.model)
        model, tokenizer = load_model_and_tokenizer(path, args.dtype, args.device)
        layers = args.layers if args.layers is not None else list(range(model.config.num_hidden_layers))
        prompts = value_attention.suite_prompts(tokenizer, args.model, max_length, args.prompts, args.tokens,
                                                args.tasks)
        measured = [measure_terms(model, ids, layers) for _, _, ids in prompts]
        stats = [layer_stats(measured, i, args.sink_lens) for i in range(len(layers))]
        where = f"{args.model}, {len(prompts)} offline-suite prompts of ~{args.tokens} tokens"
        report = {"model": args.model, "command": shlex.join(["python", "-m", "vatp.analysis.projected_values",
                                                              *argv]),
                  "device": args.device, "dtype": args.dtype, "seconds": time.perf_counter() - started,
                  "prompts": [{"task": t, "sample": i, "tokens": ids.shape[1]} for t, i, ids in prompts],
                  "layer_ids": layers, "layers": stats}
        args.out.mkdir(parents=True, exist_ok=True)
        save_figure(figure(layers, stats, where), args.out / "projected_values.png")
        write_text_file(args.out / "projected_values.json", json.dumps(report, indent=1) + "\n")
        write_text_file(args.out / "projected_values.md", markdown(report))
    except (ModelLoadError, ValueError, OSError) as err:
        print(f"projected_values: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("projected_values: interrupted; rerun the same command", file=sys.stderr)
        return 130
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
