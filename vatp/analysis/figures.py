"""Figures of one attention layer on one prompt, and the CLI that writes them as PNGs.

    python -m vatp.analysis.figures --model smollm2-135m-instruct --layer 2 --head 0 --out figs
        [--prompt-file F] [--heavy_ratio 0.25 --sink_len 4] [--dtype float32 --device cpu]

writes ``value_norms.png`` (value L1 norm per token, sinks highlighted),
``attention.png`` (log-scale attention heatmap of one query head) and
``kept_tokens.png`` (which tokens H2O and H2O+VATP keep at the same budget).
The data come from :mod:`vatp.analysis.probe`; each function here takes it and
returns a matplotlib ``Figure`` (built without pyplot, so it renders with
Agg anywhere and the notebook shows it inline).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from . import probe
from .output import save_figure
from ..names import DTYPE_NAMES

# The language reference's "global" topic: ~350 tokens of real English prose.
DEFAULT_TOPIC = "global"
# Probabilities below this are drawn as the darkest colour of the log scale.
MIN_PROB = 1e-6
SINK_COLOR, TOKEN_COLOR = "#c44e52", "#4c72b0"
# Strip-plot colours: pruned, kept by both methods, kept by this method only.
STRIP_COLORS = ("#eeeeee", "#4c72b0", "#dd8452")


def default_prompt() -> str:
    """The default prompt: a topic of Python's language reference (ships with the interpreter)."""
    from pydoc_data.topics import topics

    return topics[DEFAULT_TOPIC]


def compared_methods(heavy_ratio: float, sink_len: int) -> dict[str, dict]:
    """The two methods the kept-tokens figure contrasts: label -> :func:`vatp.enable` settings."""
    return {
        "H2O": {"heavy_ratio": heavy_ratio, "h2o": True, "apval": False},
        "H2O+VATP": {"heavy_ratio": heavy_ratio, "h2o": True, "apval": True, "sink_len": sink_len},
    }


def value_norms_figure(norms: torch.Tensor, tokens: list[str], sink_len: int, title: str = "") -> Figure:
    """Bar chart of one KV head's value L1 norms: norms (L,), tokens L strings."""
    norms = norms.numpy()
    n = len(norms)
    sinks = min(sink_len, n)
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    ax = fig.add_subplot()
    colors = [SINK_COLOR] * sinks + [TOKEN_COLOR] * (n - sinks)
    ax.bar(np.arange(n), norms, width=1.0, color=colors)
    sink_text = " ".join(repr(t) for t in tokens[:sinks])
    fig.legend(handles=[Patch(color=SINK_COLOR, label=f"sink tokens 0..{sinks - 1}: {sink_text}"),
                        Patch(color=TOKEN_COLOR, label="other tokens")], loc="outside lower center", ncol=2, fontsize=8)
    ax.set(xlim=(-0.5, n - 0.5), xlabel="token position", ylabel="value L1 norm", title=title)
    return fig


def attention_figure(probs: torch.Tensor, title: str = "") -> Figure:
    """Log-scale heatmap of one head's attention: probs (L, L), query rows x key columns."""
    probs = probs.numpy()
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    # Masked (future) keys have probability 0 and are left blank.
    shown = np.ma.masked_less_equal(probs, 0.0)
    image = ax.imshow(np.ma.maximum(shown, MIN_PROB), norm=LogNorm(vmin=MIN_PROB, vmax=1.0),
                      cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="attention probability (log scale)")
    ax.set(xlabel="key position", ylabel="query position", title=title)
    return fig


def kept_tokens_figure(kept: dict[str, torch.Tensor], sink_len: int, title: str = "") -> Figure:
    """Strip plot, one row per method, of which prompt tokens survive: label -> (L,) bool.

    Tokens kept by every method are drawn in one colour, tokens only one
    method keeps in another, so the rows show where the methods disagree.
    """
    rows = np.stack([k.numpy() for k in kept.values()])  # (methods, L)
    n = rows.shape[1]
    by_all = rows.all(axis=0)
    cells = np.where(rows, np.where(by_all, 1, 2), 0)
    fig = Figure(figsize=(11, 1.4 + 0.6 * len(kept)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(cells, aspect="auto", interpolation="nearest", cmap=ListedColormap(STRIP_COLORS), vmin=0, vmax=2)
    ax.set_yticks(range(len(kept)), [f"{label}\n{int(row.sum())}/{n} kept" for label, row in zip(kept, rows)])
    if sink_len:
        ax.axvline(min(sink_len, n) - 0.5, color=SINK_COLOR, lw=1, ls="--")
    differ = int((rows != rows[0]).any(axis=0).sum())
    ax.set(xlabel=f"token position (dashed: end of the {sink_len} sink tokens); {differ} tokens differ",
           title=title)
    fig.legend(handles=[Patch(color=c, label=t) for c, t in
                        zip(STRIP_COLORS, ("pruned", "kept by both", "kept by this method only"))],
               loc="outside lower center", ncol=3, fontsize=8)
    return fig


def make_figures(model, tokenizer, prompt: str, layer: int, head: int,
                 heavy_ratio: float = 0.25, sink_len: int = 4) -> dict[str, Figure]:
    """All three figures for one prompt, layer and query head: file stem -> Figure."""
    ids = probe.encode(tokenizer, prompt)  # (1, L)
    kv = probe.kv_head_of(model, head)
    where = f"layer {layer}, query head {head} (KV head {kv}), {ids.shape[1]} tokens"
    kept = {label: probe.kept_tokens(model, ids, layer, **settings)[kv]
            for label, settings in compared_methods(heavy_ratio, sink_len).items()}
    norms = probe.value_norms(model, ids, layer)[kv]  # (L,)
    probs = probe.attention_probs(model, ids, layer)[head]  # (L, L)
    tokens = probe.token_strings(tokenizer, ids)
    return {
        "value_norms": value_norms_figure(norms, tokens, sink_len, f"Value L1 norm per token: {where}"),
        "attention": attention_figure(probs, f"Attention: {where}"),
        "kept_tokens": kept_tokens_figure(kept, sink_len, f"Tokens kept after prefill at heavy_ratio "
                                                          f"{heavy_ratio}: {where}"),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Plot value norms, attention and the tokens H2O vs H2O+VATP "
                                     "keep, for one layer and head of a model on one prompt.")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a name from config/model2path.json")
    parser.add_argument("--layer", type=int, default=2, help="decoder layer index")
    parser.add_argument("--head", type=int, default=0, help="query head index (its KV head is used for norms)")
    parser.add_argument("--prompt-file", type=Path,
                        help=f"UTF-8 text to use as the prompt (default: pydoc topic {DEFAULT_TOPIC!r})")
    parser.add_argument("--heavy_ratio", type=float, default=0.25, help="budget ratio, as pred.py's")
    parser.add_argument("--sink_len", type=int, default=4, help="sink tokens VATP always keeps")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files (created if missing)")
    return parser.parse_args(argv)


def read_prompt(path: Path | None) -> str:
    """The text of ``--prompt-file`` (ValueError naming it if it is empty or not UTF-8), or the default prompt."""
    if path is None:
        return default_prompt()
    try:
        prompt = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 ({err}); save it as UTF-8") from None
    if not prompt.strip():
        raise ValueError(f"{path}: empty; put the text to look at in it, or leave --prompt-file out")
    return prompt


def main(argv=None) -> int:
    """Write the figures: 0 when done; 2 with one ``figures: error:`` line; 130 with one line on Ctrl-C."""
    from ..longbench.data import resolve_model
    from ..longbench.models import ModelLoadError, load_model_and_tokenizer
    from ..methods import BudgetError

    args = parse_args(argv)
    try:
        prompt = read_prompt(args.prompt_file)
        model, tokenizer = load_model_and_tokenizer(resolve_model(args.model)[0], args.dtype, args.device)
        figures = make_figures(model, tokenizer, prompt, args.layer, args.head, args.heavy_ratio, args.sink_len)
        args.out.mkdir(parents=True, exist_ok=True)
        for stem, fig in figures.items():
            path = args.out / f"{stem}.png"
            save_figure(fig, path)
            print(f"wrote {path}")
    except (ModelLoadError, BudgetError, ValueError, OSError) as err:
        print(f"figures: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("figures: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
