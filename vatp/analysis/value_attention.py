"""Accumulated attention against value L1 norm, per layer: the paper's motivating picture, measured.

    python -m vatp.analysis.value_attention --model smollm2-135m-instruct --prompts 3 --tokens 1000 --out DIR
        [--tasks offline_qa offline_retrieval offline_code] [--layers 0 2 5] [--sink_lens 4 20]

The paper (Guo, Kamigaito, Watanabe, EMNLP 2024, Sec. 2-3) argues that the
tokens with the largest accumulated attention, the attention sinks above all,
often have small value vectors, so attention alone over-rates them. For each
layer this module measures, over the tokens of a few offline-suite prompts
built as ``pred.py`` builds them:

* each token's accumulated attention, H2O's prefill score: the attention it
  receives summed over every prompt query, averaged over the query heads of
  its KV group (:func:`vatp.policy.group_to_kv_heads`), and its value L1 norm
  (:func:`vatp.policy.value_l1_norm`), per KV head;
* the Spearman rank correlation of the two, within each (prompt, KV head),
  over all tokens and over the tokens after the first ``max(sink_lens)``;
* the first ``k`` tokens' share of the total accumulated attention beside
  their share of the total value norm.

It writes ``value_attention_layers.png`` (per-layer 2-D histograms, first
tokens highlighted), ``value_attention_summary.png`` (shares and correlation
per layer), ``value_attention.json`` and ``value_attention.md`` to ``--out``.

Shapes: ``input_ids`` (1, L); per prompt, scores are (layers, kv_heads, L).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import probe
from .output import save_figure, write_text_file
from .. import hook, policy
from ..names import DTYPE_NAMES, VALUE_NORMS, check_choice
from ..value_terms import output_weight, value_norms

DEFAULT_TASKS = ("offline_qa", "offline_retrieval", "offline_code")
SINK_LENS = (4, 20)  # StreamingLLM's 4 sinks; the paper's sink_len 20
MIN_SCORE = 1e-8  # floor before the log10, so a score that underflowed to 0 is still drawn
FIRST_COLORS = ("#c44e52", "#dd8452")  # tokens [0, sink_lens[0]), then [sink_lens[0], sink_lens[1])
SHARE_STYLES = {"attention": "-", "value_norm": "--"}
HIST_BINS = 40
GRID_COLUMNS = 6


# ---------------------------------------------------------------- measuring

@contextmanager
def _eager(model):
    """Run the model with transformers' eager attention (the one that returns probabilities)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _keep_column_sums(found: dict, layer: int, module, args, output) -> None:
    """Forward hook on an attention module: store the attention each key receives, (heads, L)."""
    probs = output[1]  # (1, heads, L, L), query rows x key columns
    found[("attention", layer)] = probs[0].float().sum(dim=-2)


def _keep_value_norms(found: dict, layer: int, kv_heads: int, kind: str, attention, module, args, output) -> None:
    """Forward hook on ``v_proj``: store each token's value term ``kind`` (:mod:`vatp.value_terms`), (kv_heads, L)."""
    values = output[0].view(output.shape[1], kv_heads, -1).transpose(0, 1).float()  # (kv_heads, L, head_dim)
    weight = output_weight(attention, kv_heads, values.shape[-1]).float() if kind == "wo_l1" else None
    found[("value_norm", layer)] = value_norms(values, kind, weight)


def measure(model, input_ids: torch.Tensor, layers: list[int], value_norm: str = "l1") -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
    """Accumulated attention and value terms of the prompt's tokens in ``layers``.

    input_ids (1, L) -> two float32 tensors (len(layers), kv_heads, L): the
    attention each token receives summed over all L queries (the mean over
    the query heads of its KV group), and its value vector's ``value_norm``
    (``"l1"``, the paper's; ``"l2"``; ``"wo_l1"``, projected through ``o_proj``). One
    forward, eager attention, stopped after the last layer asked for; the
    model is left as it was.
    """
    if hook.session_of(model) is not None:
        raise ValueError("the model is VATP-enabled: call vatp.disable(model) before inspecting it")
    if not layers:
        raise ValueError("no layers asked for")
    check_choice("value_norm", value_norm, VALUE_NORMS)
    kv_heads = model.config.num_key_value_heads
    modules = {layer: probe._attention(model, layer) for layer in layers}  # refuses a layer out of range

    def capture(_, found):
        handles = []
        for layer, attn in modules.items():
            handles.append(attn.register_forward_hook(partial(_keep_column_sums, found, layer)))
            handles.append(attn.v_proj.register_forward_hook(partial(_keep_value_norms, found, layer, kv_heads,
                                                                     value_norm, attn)))
        return handles

    with _eager(model):
        found = probe.forward_through(model, input_ids, max(layers), capture)
    scores = torch.stack([policy.group_to_kv_heads(found[("attention", i)], kv_heads) for i in layers])
    norms = torch.stack([found[("value_norm", i)] for i in layers])
    return scores.cpu(), norms.cpu()


# ---------------------------------------------------------------- statistics

def ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` (n,), ties given their average rank: (n,) float64."""
    ordered, order = x.sort()
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # mean of positions end-count+1 .. end
    out = torch.empty(x.shape[0], dtype=torch.float64)
    out[order] = mean_rank[inverse]
    return out


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two (n,) tensors: the Pearson correlation of their ranks.

    NaN when either is constant (its ranks have no spread).
    """
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"x and y must be (n,) of the same n, got {tuple(x.shape)} and {tuple(y.shape)}")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.square().sum() * ry.square().sum()).sqrt()
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def first_share(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Share of each row's total held by its first ``k`` tokens: (kv_heads, L) -> (kv_heads,)."""
    return scores[:, :k].sum(dim=-1) / scores.sum(dim=-1)


def top_token(scores: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The most-attended token of each KV head and where its value norm ranks.

    scores, norms (kv_heads, L) -> its position (kv_heads,) long and the
    fraction of the head's tokens whose value norm is smaller (kv_heads,):
    0 means it has the smallest value vector of the prompt.
    """
    top = scores.argmax(dim=-1)  # (kv_heads,)
    own = norms.gather(-1, top[:, None])  # (kv_heads, 1)
    return top, (norms < own).double().mean(dim=-1)


def layer_stats(scores: list[torch.Tensor], norms: list[torch.Tensor], sink_lens=SINK_LENS) -> dict:
    """One layer's numbers over prompts: scores and norms are per-prompt (kv_heads, L_p) tensors.

    Correlations are taken within each (prompt, KV head), then averaged;
    ``spearman_after_sinks`` leaves out the first ``max(sink_lens)`` tokens.
    Shares are averaged over prompts and KV heads. ``top_token_positions``
    lists, per (prompt, KV head), where the most-attended token sits;
    ``top_token_value_percentile`` is the mean of :func:`top_token`'s rank.
    """
    skip = max(sink_lens)
    per_head = torch.tensor([[spearman(s[h], v[h]) for h in range(s.shape[0])] for s, v in zip(scores, norms)])
    after = [spearman(s[h, skip:], v[h, skip:]) for s, v in zip(scores, norms) for h in range(s.shape[0])]
    share = {str(k): {"attention": float(torch.cat([first_share(s, k) for s in scores]).mean()),
                      "value_norm": float(torch.cat([first_share(v, k) for v in norms]).mean())}
             for k in sink_lens}
    tops = [top_token(s, v) for s, v in zip(scores, norms)]
    return {"spearman": float(per_head.mean()), "spearman_per_kv_head": per_head.mean(dim=0).tolist(),
            "spearman_after_sinks": float(np.mean(after)), "share": share,
            "top_token_positions": torch.cat([p for p, _ in tops]).tolist(),
            "top_token_value_percentile": float(torch.cat([r for _, r in tops]).mean())}


def all_layer_stats(layers: list[int], measured: list[tuple[torch.Tensor, torch.Tensor]],
                    sink_lens=SINK_LENS) -> list[dict]:
    """Per-layer numbers: ``measured`` holds one :func:`measure` result per prompt."""
    return [{"layer": layer, **layer_stats([s[i] for s, _ in measured], [v[i] for _, v in measured], sink_lens)}
            for i, layer in enumerate(layers)]


# ---------------------------------------------------------------- figures

def _pooled(measured, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer index ``i``'s points over prompts and KV heads: log10 score, norm, token position (all (N,))."""
    scores = torch.cat([s[i].flatten() for s, _ in measured])
    norms = torch.cat([v[i].flatten() for _, v in measured])
    positions = torch.cat([torch.arange(s.shape[-1]).repeat(s.shape[1]) for s, _ in measured])
    return scores.clamp_min(MIN_SCORE).log10().numpy(), norms.numpy(), positions.numpy()


def layers_figure(layers: list[int], measured, stats: list[dict], sink_lens=SINK_LENS, title: str = "") -> Figure:
    """A grid of per-layer 2-D histograms of log10 accumulated attention (x) against value L1 norm (y).

    Every (prompt, KV head, token) is one count; the first ``sink_lens``
    tokens are drawn on top as dots. Each panel is titled with its layer and
    mean within-prompt Spearman correlation.
    """
    columns = min(GRID_COLUMNS, len(layers))
    rows = -(-len(layers) // columns)
    fig = Figure(figsize=(2.6 * columns, 2.3 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    bounds = (0,) + tuple(sink_lens[:2])
    for i, (ax, layer) in enumerate(zip(axes, layers)):
        x, y, pos = _pooled(measured, i)
        ax.hist2d(x, y, bins=HIST_BINS, cmap="Greys", norm=LogNorm())
        # The later first tokens first, so the sinks (the very first ones) are drawn on top.
        for color, start, stop in reversed(list(zip(FIRST_COLORS, bounds, bounds[1:]))):
            first = (pos >= start) & (pos < stop)
            ax.scatter(x[first], y[first], s=7, color=color, edgecolors="none")
        ax.set_title(f"layer {layer}: ρ = {stats[i]['spearman']:.2f}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(layers):]:
        ax.axis("off")
    handles = [Line2D([], [], ls="", marker="o", color=c, label=f"tokens {a}..{b - 1}")
               for c, a, b in zip(FIRST_COLORS, bounds, bounds[1:])]
    fig.legend(handles=handles + [Line2D([], [], ls="", marker="s", color="0.4", label="all tokens (log count)")],
               loc="outside right upper", fontsize=8)
    fig.supxlabel("log10 accumulated attention (H2O prefill score, mean over the KV group's query heads)", fontsize=9)
    fig.supylabel("value L1 norm", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def summary_figure(stats: list[dict], title: str = "") -> Figure:
    """Per layer: the first tokens' attention share beside their value-norm share, and the correlation."""
    layers = [s["layer"] for s in stats]
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    share_ax, rho_ax = fig.subplots(1, 2)
    for k, color in zip(stats[0]["share"], FIRST_COLORS):
        for what, style in SHARE_STYLES.items():
            share_ax.plot(layers, [100 * s["share"][k][what] for s in stats], style, color=color, marker=".",
                          label=f"first {k}: {what.replace('_', ' ')} share")
    share_ax.set(xlabel="layer", ylabel="% of the layer's total (log scale)", yscale="log")
    share_ax.set_title("First tokens' share of attention and of value norm", fontsize=10)
    fig.legend(handles=share_ax.get_lines(), loc="outside lower left", ncol=2, fontsize=7)
    rho_ax.plot(layers, [s["spearman"] for s in stats], "-", marker=".", color="#4c72b0", label="all tokens")
    rho_ax.plot(layers, [s["spearman_after_sinks"] for s in stats], "--", marker=".", color="#55a868",
                label=f"tokens after the first {max(int(k) for k in stats[0]['share'])}")
    rho_ax.axhline(0, color="0.6", lw=0.8)
    rho_ax.set(xlabel="layer", ylabel="Spearman ρ", ylim=(-1, 1))
    rho_ax.set_title("Rank correlation of accumulated attention and value norm", fontsize=10)
    rho_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------- prompts and reports

def suite_prompts(tokenizer, model_name: str, max_length: int, count: int, tokens: int,
                  tasks=DEFAULT_TASKS) -> list[tuple[str, int, torch.Tensor]]:
    """``count`` offline-suite prompts of about ``tokens`` tokens, as pred.py encodes them.

    Prompt ``i`` is sample ``i // len(tasks)`` of task ``tasks[i % len(tasks)]``:
    (task, sample index, input_ids (1, L)) each.
    """
    from ..longbench import suite
    from ..longbench.data import read_config
    from ..longbench.prompts import encode_prompt

    formats = read_config("dataset2prompt")
    chosen = [(tasks[i % len(tasks)], i // len(tasks)) for i in range(count)]
    return [(task, index, encode_prompt(tokenizer, suite.generate(task, index, tokens), task, formats[task],
                                        model_name, max_length)) for task, index in chosen]


def headline(stats: list[dict]) -> dict:
    """Ranges across layers of the correlation and of each share (min, max, and the mean)."""
    def spread(values):
        return {"min": min(values), "max": max(values), "mean": float(np.mean(values))}

    out = {what: spread([s[what] for s in stats])
           for what in ("spearman", "spearman_after_sinks", "top_token_value_percentile")}
    for k in stats[0]["share"]:
        for what in SHARE_STYLES:
            out[f"first_{k}_{what}_share"] = spread([s["share"][k][what] for s in stats])
    return out


def markdown(report: dict) -> str:
    """The summary: what was run, the headline ranges, a per-layer table."""
    ks = list(report["layers"][0]["share"])
    top = report["headline"]
    prompts = ", ".join(f"{p['task']}#{p['sample']} ({p['tokens']} tokens)" for p in report["prompts"])
    lines = [f"# Accumulated attention vs value L1 norm: {report['model']}", "",
             f"Command: `{report['command']}` ({report['seconds']:.0f} s on {report['device']}).", "",
             f"Prompts: {prompts}. Each token's accumulated attention is H2O's prefill score (the attention it "
             "receives summed over every prompt query, mean over the query heads of its KV group); ρ is the "
             "Spearman correlation with its value L1 norm, taken within each (prompt, KV head) and averaged; "
             f"'after' leaves out the first {max(int(k) for k in ks)} tokens. Shares are of the layer's total, "
             "averaged over prompts and KV heads.", "",
             f"- ρ across layers: {top['spearman']['min']:.2f} to {top['spearman']['max']:.2f} "
             f"(mean {top['spearman']['mean']:.2f}); after the first tokens: "
             f"{top['spearman_after_sinks']['min']:.2f} to {top['spearman_after_sinks']['max']:.2f}."]
    for k in ks:
        a, v = top[f"first_{k}_attention_share"], top[f"first_{k}_value_norm_share"]
        even = np.mean([int(k) / p["tokens"] for p in report["prompts"]])
        lines.append(f"- First {k} tokens: {100 * a['min']:.1f}-{100 * a['max']:.1f}% of the attention "
                     f"(mean {100 * a['mean']:.1f}%) but {100 * v['min']:.1f}-{100 * v['max']:.1f}% of the "
                     f"value norm (mean {100 * v['mean']:.1f}%); an even share would be {100 * even:.1f}%.")
    pct = top["top_token_value_percentile"]
    lines.append(f"- The most-attended token's value norm is above {100 * pct['min']:.0f}-{100 * pct['max']:.0f}% "
                 f"of the prompt's tokens (mean {100 * pct['mean']:.0f}%); the table lists where it sits "
                 "(most frequent position first, over prompts and KV heads).")
    header = ["layer", "ρ", "ρ after"] + [f"first {k} {w}" for k in ks for w in ("attn %", "value %")]
    header += ["top token at", "its value pct"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for s in report["layers"]:
        cells = [str(s["layer"]), f"{s['spearman']:.2f}", f"{s['spearman_after_sinks']:.2f}"]
        cells += [f"{100 * s['share'][k][w]:.1f}" for k in ks for w in SHARE_STYLES]
        positions = Counter(s["top_token_positions"]).most_common()
        cells += [", ".join(str(p) for p, _ in positions), f"{100 * s['top_token_value_percentile']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Figures: `value_attention_layers.png`, `value_attention_summary.png`.", ""]
    return "\n".join(lines)


def parse_args(argv=None, prog: str = "python -m vatp.analysis.value_attention",
               description: str = "Per layer: accumulated attention vs value L1 norm on offline-suite prompts (rank "
                                  "correlation, first tokens' shares).") -> argparse.Namespace:
    """The flags of this module, and of :mod:`vatp.analysis.projected_values` (its ``prog`` and ``description``)."""
    from ..longbench.suite import TASKS

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a name from config/model2path.json")
    parser.add_argument("--prompts", type=int, default=3, help="how many prompts (cycling over --tasks)")
    parser.add_argument("--tokens", type=int, default=1000, help="approximate prompt size, as the suite's")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(DEFAULT_TASKS))
    parser.add_argument("--layers", type=int, nargs="+", help="decoder layers (default: all)")
    parser.add_argument("--sink_lens", type=int, nargs=2, default=list(SINK_LENS),
                        help="the two first-token counts whose shares are reported")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG, JSON and markdown files")
    args = parser.parse_args(argv)
    if args.prompts < 1:
        parser.error(f"--prompts must be >= 1, got {args.prompts}")
    if not 0 < args.sink_lens[0] < args.sink_lens[1]:
        parser.error(f"--sink_lens must be two increasing positive counts, got {args.sink_lens}")
    return args


def main(argv=None) -> int:
    from ..longbench.data import resolve_model
    from ..longbench.models import ModelLoadError, load_model_and_tokenizer

    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    started = time.perf_counter()
    try:
        path, max_length = resolve_model(args.model)
        model, tokenizer = load_model_and_tokenizer(path, args.dtype, args.device)
        layers = args.layers if args.layers is not None else list(range(model.config.num_hidden_layers))
        prompts = suite_prompts(tokenizer, args.model, max_length, args.prompts, args.tokens, args.tasks)
        measured = [measure(model, ids, layers) for _, _, ids in prompts]
        stats = all_layer_stats(layers, measured, args.sink_lens)
        where = f"{args.model}, {len(prompts)} offline-suite prompts of ~{args.tokens} tokens"
        figs = {"value_attention_layers": layers_figure(layers, measured, stats, args.sink_lens,
                                                        f"Accumulated attention vs value L1 norm per layer: {where}"),
                "value_attention_summary": summary_figure(stats, where)}
        report = {"model": args.model, "command": shlex.join(["python", "-m", "vatp.analysis.value_attention", *argv]),
                  "device": args.device, "dtype": args.dtype, "seconds": time.perf_counter() - started,
                  "prompts": [{"task": t, "sample": i, "tokens": ids.shape[1]} for t, i, ids in prompts],
                  "sink_lens": args.sink_lens, "headline": headline(stats), "layers": stats}
        args.out.mkdir(parents=True, exist_ok=True)
        for stem, fig in figs.items():
            save_figure(fig, args.out / f"{stem}.png")
        write_text_file(args.out / "value_attention.json", json.dumps(report, indent=1) + "\n")
        write_text_file(args.out / "value_attention.md", markdown(report))
    except (ModelLoadError, ValueError, OSError) as err:
        print(f"value_attention: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("value_attention: interrupted; rerun the same command", file=sys.stderr)
        return 130
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
