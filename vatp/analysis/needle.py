"""Needle in a haystack: can the model still find one planted fact once the KV cache is pruned?

    python -m vatp.analysis.needle --out needle_out [--lengths 1000 2000 4000] [--depths 0 10 ... 100]
        [--budgets 0.5 0.2] [--methods h2o scissorhands streaming snapkv] [--backend evict]

One sentence, "The secret number of the Blue Heron archive is 48213." (a value
drawn per prompt from a seeded generator, so the model cannot guess it), is
planted at a depth of 0%, 10%, ..., 100% of a haystack of sentences from
Python's own documentation (:mod:`vatp.longbench.suite.sources`), and the
model is asked for the number, in the chat format pred.py gives LongBench.
Every prompt holds exactly ``length`` tokens. It runs the full cache and each
method, with and without VATP, at each budget (heavy_ratio = budget / 2), by
greedy decoding; an answer scores 1 if it contains the number.

Each point appends one JSON line to ``OUT/results.jsonl`` as soon as it is
done; a rerun skips the points already there (a half-written last line, left
by a kill, is dropped) and loads the model only if a point is left; Ctrl-C
stops it with one line (exit status 130), and a problem with the flags or the
results file with one ``needle: error:`` line (exit status 2) that leaves the
folder as it was. ``results.jsonl`` is never followed through a symbolic
link. Then it
draws ``OUT/needle.png``: one heatmap (depth x context length) per method
variant, budgets as rows, the full cache repeated at the head of every row as
its reference, one colour scale for all; and writes ``OUT/needle.md``: the
needles found per variant, budget and length, and each VATP variant against
its method on the same prompts (:mod:`vatp.analysis.paired`: the mean
difference in percentage points with its paired bootstrap interval, per length
and averaged over lengths). ``--vnorm``, ``--vepsilon`` and ``--vstage`` (pred.py's
value-term options of VATP) add each method's VATP with those options beside the
paper's, paired with it and with the method.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from .. import hook
from ..longbench.jsonl import BadLine, read_jsonl
from ..longbench.prediction_files import RunIOError, open_no_link, refuse_links
from ..longbench.prompts import build_chat, decode, generation_kwargs, uses_template
from ..longbench.suite import sources
from ..methods import get_method
from ..methods.value_aware import ValueAware
from ..names import BACKENDS, DTYPE_NAMES, METHODS, VALUE_NORMS, check_choice, method_label, value_options
from .output import save_figure, write_text_file
from .paired import PairingError, paired_comparison
from .report import paired_caption, paired_table

KEY = "the Blue Heron archive"
INSTRUCTION = ("Below is a long text. One sentence in it states a secret number. Read the text, then answer "
               "the question after it.")
QUESTION = f"Question: What is the secret number of {KEY}? Answer with the number only.\nAnswer:"
MARKER = "<<<HAYSTACK>>>"  # where the haystack goes in the chat prompt, split out before tokenizing
FULL = "Full cache"
RESULTS, FIGURE, TABLE = "results.jsonl", "needle.png", "needle.md"
# What a result must share with the results already in OUT to be comparable; other settings
# (the backend: mask and evict give the same predictions) do not change an answer.
RUN_KEYS = ("model", "dtype", "sink_len", "max_new_tokens")
# What the resume, the figure and the tables read from every result line, and its JSON type.
RESULT_FIELDS = {"label": str, "budget": (int, float), "length": int, "depth": int, "score": int}


PAPERS_VALUE_TERM = ("l1", 0.0, 0.0)  # VATP's value_norm, epsilon and two_stage, as the paper has them


@dataclass(frozen=True)
class Variant:
    """One column of the heatmaps: a method (None: the full cache), with VATP or not (with its value-term
    options: ``value_norm``, ``epsilon``, ``two_stage``), at a budget."""

    method: str | None
    apval: bool = False
    budget: float = 1.0
    value_term: tuple[str, float, float] = PAPERS_VALUE_TERM

    @property
    def label(self) -> str:
        return FULL if self.method is None else method_label(self.method, self.apval) + value_options(*self.value_term)

    def settings(self, sink_len: int, backend: str) -> dict:
        """:func:`vatp.enable`'s settings; sinks with VATP and StreamingLLM, as pred.py."""
        sinks = sink_len if self.apval or self.method == "streaming" else 0
        options = dict(zip(("value_norm", "epsilon", "two_stage"), self.value_term)) if self.apval else {}
        return {"method": self.method, "apval": self.apval, "heavy_ratio": self.budget / 2,
                "sink_len": sinks, "backend": backend, **options}


@dataclass(frozen=True)
class NeedleGrid:
    """The points to run: every (length, depth) for the full cache and each method variant and budget."""

    lengths: tuple[int, ...] = (1000, 2000, 4000)
    depths: tuple[int, ...] = tuple(range(0, 101, 10))
    budgets: tuple[float, ...] = (0.5, 0.2)
    methods: tuple[str, ...] = ("h2o", "scissorhands", "streaming", "snapkv")
    sink_len: int = 20
    backend: str = "evict"
    max_new_tokens: int = 24  # the model answers "The secret number of ... is 48213": ~16 tokens
    value_term: tuple[str, float, float] = PAPERS_VALUE_TERM  # another: a VATP variant beside the paper's

    def __post_init__(self):
        for name in ("lengths", "depths", "budgets", "methods"):
            values = getattr(self, name)
            if repeated := sorted({v for v in values if values.count(v) > 1}, key=str):
                raise ValueError(f"--{name} repeats {', '.join(map(str, repeated))}: each point would run twice "
                                 "and count twice; give each value once")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be positive token counts, got {self.lengths}")
        if not self.depths or not all(0 <= d <= 100 for d in self.depths):
            raise ValueError(f"depths must be percentages in [0, 100], got {self.depths}")
        if not all(0.0 < b < 1.0 for b in self.budgets):
            raise ValueError(f"budgets must be shares of the prompt in (0, 1), got {self.budgets}")
        for name in self.methods:
            check_choice("method", name, METHODS)
        check_choice("backend", self.backend, BACKENDS)
        if self.sink_len < 0 or self.max_new_tokens < 1:
            raise ValueError("sink_len must be >= 0 and max_new_tokens >= 1")
        ValueAware(get_method("h2o"), *self.value_term)  # refuses options VATP does not have

    def variants(self) -> list[Variant]:
        """The full cache, then per budget each method and (except StreamingLLM, which scores nothing
        for VATP to weight) its VATP variant, and its VATP with ``value_term`` where that is not the paper's."""
        terms = [PAPERS_VALUE_TERM] + [self.value_term] * (self.value_term != PAPERS_VALUE_TERM)
        return [Variant(None)] + [v for b in self.budgets for m in self.methods
                                  for v in [Variant(m, False, b)] + [Variant(m, True, b, t) for t in terms]
                                  if not (v.apval and m == "streaming")]

    def columns(self) -> list[str]:
        """Heatmap panel labels in column order."""
        return list(dict.fromkeys(v.label for v in self.variants()))


def point_key(label: str, budget: float, length: int, depth: int) -> tuple:
    """What identifies a result in results.jsonl."""
    return label, float(budget), int(length), int(depth)


# --- prompts -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NeedlePrompt:
    """A built prompt: ``ids`` (1, length) token ids, the value asked for, where the needle sits."""

    ids: torch.Tensor
    value: str
    needle_at: int  # index of the needle's first token in ``ids``
    context: tuple[int, int]  # [start, end) of the haystack with its needle in ``ids``


@lru_cache(maxsize=None)
def filler_sentences() -> tuple[str, ...]:
    """The haystack's sentences, in a fixed order: the prose of Python's language reference."""
    return tuple(s for passage in sources.passages() for s in sources.sentences(passage))


def encode_filler(tokenizer) -> list[list[int]]:
    """Token ids of each haystack sentence, encoded with its leading space (one list per sentence)."""
    return [tokenizer.encode(" " + s, add_special_tokens=False) for s in filler_sentences()]


def needle_value(length: int, depth: int) -> str:
    """The secret number of one prompt: 5 digits, fixed by (length, depth), the same for every method."""
    return str(random.Random(f"needle-{length}-{depth}").randint(10000, 99999))


def needle_sentence(value: str) -> str:
    return f"The secret number of {KEY} is {value}."


def chat_parts(tokenizer, model_name: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt before and after the haystack (pred.py's chat format and special tokens)."""
    chat = build_chat(tokenizer, f"{INSTRUCTION}\n\n{MARKER}\n\n{QUESTION}", model_name)
    head, tail = chat.split(MARKER)
    special = not uses_template(tokenizer, model_name)
    return tokenizer.encode(head, add_special_tokens=special), tokenizer.encode(tail, add_special_tokens=False)


def fill(sentences: list[list[int]], n: int) -> tuple[list[int], list[int]]:
    """The first ``n`` tokens of the haystack, and the offsets where a sentence starts (0 and ``n`` included)."""
    ids, bounds = [], [0]
    for sentence in sentences:
        if len(ids) + len(sentence) >= n:
            break
        ids += sentence
        bounds.append(len(ids))
    else:
        raise ValueError(f"the haystack holds only {len(ids)} tokens; {n} were asked for")
    ids += sentence[:n - len(ids)]  # the last sentence, cut to fit
    return ids, bounds + [n]


def build_prompt(tokenizer, haystack: list[list[int]], model_name: str, length: int, depth: int) -> NeedlePrompt:
    """The needle prompt of ``length`` tokens with the fact at ``depth`` % of the haystack.

    ``haystack`` is :func:`encode_filler`'s; the needle goes at the sentence
    boundary nearest to the depth (0: first in the context, 100: last).
    """
    value = needle_value(length, depth)
    head, tail = chat_parts(tokenizer, model_name)
    needle = tokenizer.encode(" " + needle_sentence(value), add_special_tokens=False)
    n = length - len(head) - len(tail) - len(needle)
    if n < 1:
        raise ValueError(f"length {length} is too short: the instruction, question and needle alone take "
                         f"{length - n} tokens")
    filler, bounds = fill(haystack, n)
    cut = min(bounds, key=lambda b: abs(b - depth / 100 * n))
    ids = head + filler[:cut] + needle + filler[cut:] + tail
    return NeedlePrompt(torch.tensor([ids]), value, len(head) + cut, (len(head), len(ids) - len(tail)))


def score(answer: str, value: str) -> int:
    """1 if the answer contains the value, else 0."""
    return int(value in answer)


# --- running and resuming ------------------------------------------------------------------------

def answer(model, tokenizer, prompt: NeedlePrompt, variant: Variant, grid: NeedleGrid) -> str:
    """The model's greedy answer to the prompt, with the variant's pruning on (none for the full cache)."""
    ids = prompt.ids.to(model.device)
    kwargs = generation_kwargs(tokenizer, "needle", grid.max_new_tokens, ids.shape[1])
    pruning = nullcontext() if variant.method is None else hook.enabled(
        model, **variant.settings(grid.sink_len, grid.backend))
    with torch.no_grad(), pruning:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return decode(tokenizer, out[0, ids.shape[1]:])


def drop_partial_line(path: Path) -> bool:
    """Cut a half-written last line (no newline: the run was killed mid-write) off ``path``; True if cut."""
    if not path.is_file():
        return False
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end == len(data):
        return False
    fd = open_no_link(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, end)
    finally:
        os.close(fd)
    return True


def read_results(path: Path) -> list[dict]:
    """The complete result lines of ``path`` ([] if none), each checked; a half-written last line is ignored."""
    if not path.is_file():
        return []
    results = []
    try:
        for number, result in read_jsonl(path, complete_only=True):
            if problem := _result_problem(result):
                raise ValueError(f"{path}:{number} is not a result line ({problem}); remove that line to resume")
            results.append(result)
    except BadLine as bad:
        where = f"{path}:{bad.number}"
        if bad.not_utf8:
            raise ValueError(f"{where}: not UTF-8 ({bad.cause}); restore it, or use another --out") from None
        raise ValueError(f"{where} is not a JSON line ({bad.cause}); remove that line to resume") from None
    return results


def _result_problem(result) -> str | None:
    """What keeps ``result`` from being a line that :func:`write_point` wrote; None if nothing."""
    if not isinstance(result, dict):
        return f"{type(result).__name__}, not an object"
    for key, kind in RESULT_FIELDS.items():
        if key not in result:
            return f'no "{key}"'
        if not isinstance(result[key], kind) or isinstance(result[key], bool):
            return f'"{key}" is {json.dumps(result[key])}'
    return None


def _append(path: Path):
    """``path`` opened to append text, never through a symbolic link."""
    return open(path, "a", encoding="utf-8", opener=open_no_link)


def check_same_run(results: list[dict], run: dict) -> None:
    """Refuse to add results made with other settings than ``run`` (RUN_KEYS) to a results file."""
    for result in results:
        diffs = {k: (result.get(k), run[k]) for k in RUN_KEYS if result.get(k) != run[k]}
        if diffs:
            changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diffs.items())
            raise ValueError(f"the results already in the folder were made with other settings ({changes}); "
                             "use another --out")


def pending(grid: NeedleGrid, results: list[dict]) -> list[tuple[int, int, Variant]]:
    """The (length, depth, variant) points of the grid not yet in ``results``, shortest prompts first."""
    done = {point_key(r["label"], r["budget"], r["length"], r["depth"]) for r in results}
    return [(length, depth, v) for length in sorted(grid.lengths) for depth in grid.depths
            for v in grid.variants() if point_key(v.label, v.budget, length, depth) not in done]


def run_points(model, tokenizer, model_name: str, grid: NeedleGrid, points, path: Path, run: dict) -> None:
    """Answer and score each point (:func:`pending`'s order), appending one flushed JSON line per point to ``path``.

    ``run`` (the RUN_KEYS settings) goes into every line. Each prompt is built once for all its variants.
    """
    haystack = encode_filler(tokenizer)
    with _append(path) as f:
        for (length, depth), same_prompt in groupby(points, key=lambda point: point[:2]):
            prompt = build_prompt(tokenizer, haystack, model_name, length, depth)
            for *_, variant in same_prompt:
                write_point(f, model, tokenizer, prompt, (length, depth, variant), grid, run)


def write_point(f, model, tokenizer, prompt: NeedlePrompt, point: tuple, grid: NeedleGrid, run: dict) -> None:
    """Answer one point's prompt, score it, append its JSON line to ``f`` (flushed) and print a progress line."""
    length, depth, variant = point
    started = time.perf_counter()
    text = answer(model, tokenizer, prompt, variant, grid)
    result = {"label": variant.label, "method": variant.method, "apval": variant.apval, "budget": variant.budget,
              "length": length, "depth": depth, "value": prompt.value, "answer": text,
              "score": score(text, prompt.value), "needle_at": prompt.needle_at,
              "prompt_tokens": prompt.ids.shape[1], "seconds": round(time.perf_counter() - started, 3),
              "backend": grid.backend, **run}
    f.write(json.dumps(result, ensure_ascii=False) + "\n")
    f.flush()
    budget = "" if variant.method is None else f" {round(100 * variant.budget)}%"
    print(f"{variant.label}{budget} | {length} tokens, depth {depth}%: {result['score']} "
          f"({result['seconds']} s) {text.strip()[:80]!r}", flush=True)


# --- the figure ----------------------------------------------------------------------------------

def score_grid(results: list[dict], label: str, budget: float, lengths: list[int], depths: list[int]) -> np.ndarray:
    """Score per (depth, length) of one variant: (depths, lengths), NaN where nothing was run."""
    cells = np.full((len(depths), len(lengths)), np.nan)
    for r in results:
        if r["label"] == label and (label == FULL or r["budget"] == budget):
            cells[depths.index(r["depth"]), lengths.index(r["length"])] = r["score"]
    return cells


def heatmap_figure(results: list[dict], columns: list[str], budgets: list[float], title: str = "") -> Figure:
    """One heatmap per method variant (columns) and budget (rows): depth x context length, shared colours.

    The full cache, which has no budget, heads every row as that row's reference.
    """
    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    budgets = sorted(budgets, reverse=True)
    fig = Figure(figsize=(1.0 + 1.7 * len(columns), 0.8 + 3.0 * len(budgets)), layout="constrained")
    axes = fig.subplots(len(budgets), len(columns), squeeze=False, sharex=True, sharey=True)
    cmap = colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    for row, budget in zip(axes, budgets):
        for ax, label in zip(row, columns):
            cells = score_grid(results, label, budget, lengths, depths)
            image = ax.imshow(np.ma.masked_invalid(cells), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                              interpolation="nearest")
            share = "no results" if np.isnan(cells).all() else f"mean {np.nanmean(cells):.2f}"
            where = "100%" if label == FULL else f"{round(100 * budget)}% budget"
            ax.set_title(f"{label}\n{where}, {share}", fontsize=9)
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [str(d) for d in depths], fontsize=7)
        row[0].set_ylabel("needle depth, % of the context")
    for ax in axes[-1]:
        ax.set_xlabel("context, tokens")
    fig.colorbar(image, ax=axes, shrink=0.8, label="score: 1 = number found (grey: not run)")
    fig.suptitle(title)
    return fig


# --- the tables ----------------------------------------------------------------------------------

def found_counts(results: list[dict], grid: NeedleGrid) -> str:
    """Markdown: needles found out of those asked, per variant and budget (rows) and length (columns)."""
    lengths = sorted({r["length"] for r in results})
    header = ["Variant", "Budget", *[f"{n} tokens" for n in lengths], "All"]
    lines = ["| " + " | ".join(header) + " |", "| --- | ---: |" + " ---: |" * (len(lengths) + 1)]
    for v in grid.variants():
        scores = [[r["score"] for r in results if r["label"] == v.label and r["budget"] == v.budget
                   and r["length"] == n] for n in lengths]
        cells = [f"{sum(s)} / {len(s)}" if s else "" for s in scores]
        every = [x for s in scores for x in s]
        budget = "100%" if v.method is None else f"{round(100 * v.budget)}%"
        lines.append("| " + " | ".join([v.label, budget, *cells, f"{sum(every)} / {len(every)}"]) + " |")
    return "\n".join(lines)


def vatp_comparisons(results: list[dict], grid: NeedleGrid) -> list[tuple[str, dict]]:
    """Each VATP variant minus its method on the same prompts, per budget, and a VATP with other value-term
    options minus the paper's VATP and minus the method: (label, length -> Interval), in percentage points
    found; a length counts only once both have answered all of its depths."""
    def by_length(label: str, budget: float) -> dict:
        points = {}
        for r in results:
            if r["label"] == label and r["budget"] == budget:
                points.setdefault(f"{r['length']} tokens", {})[r["depth"]] = 100.0 * r["score"]
        return {n: s for n, s in points.items() if len(s) == len(grid.depths)}

    comparisons = []
    for budget in grid.budgets:
        for method in grid.methods:
            if method == "streaming":
                continue
            plain, vatp = Variant(method, False, budget), Variant(method, True, budget)
            pairs = [(plain, vatp)]
            if grid.value_term != PAPERS_VALUE_TERM:
                other = Variant(method, True, budget, grid.value_term)
                pairs += [(vatp, other), (plain, other)]
            for first, second in pairs:
                base, variant = by_length(first.label, budget), by_length(second.label, budget)
                shared = sorted(set(base) & set(variant), key=lambda n: int(n.split()[0]))
                if not shared:
                    continue
                try:
                    found = paired_comparison({n: base[n] for n in shared}, {n: variant[n] for n in shared})
                except PairingError:  # the same depths were asked of both: a changed grid, not a result
                    continue
                comparisons.append((f"{second.label} vs {first.label}, {round(100 * budget)}% budget", found))
    return comparisons


def needle_markdown(results: list[dict], grid: NeedleGrid, title: str) -> str:
    """needle.md: the found counts, then the paired VATP comparisons."""
    text = f"# {title}\n\nNeedles found (one prompt per depth and length):\n\n{found_counts(results, grid)}\n"
    comparisons = vatp_comparisons(results, grid)
    if comparisons:
        text += (f"\nVATP against its method, in percentage points of needles found (one prompt per depth, "
                 f"the lengths as datasets): {paired_caption()}\n\n{paired_table(comparisons)}\n")
    return text


# --- the command ---------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    defaults = NeedleGrid()
    p = argparse.ArgumentParser(description="Needle-in-a-haystack heatmaps for the full cache and each method "
                                "variant at each KV budget (resumes from OUT/results.jsonl).")
    p.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, needle.png and needle.md")
    p.add_argument("--lengths", type=int, nargs="+", default=list(defaults.lengths), help="prompt lengths, tokens")
    p.add_argument("--depths", type=int, nargs="+", default=list(defaults.depths), help="needle depths, %%")
    p.add_argument("--budgets", type=float, nargs="+", default=list(defaults.budgets),
                   help="KV budgets, shares of the prompt (heavy_ratio = budget / 2)")
    p.add_argument("--methods", nargs="+", default=list(defaults.methods), choices=list(METHODS))
    p.add_argument("--backend", default=defaults.backend, choices=BACKENDS)
    p.add_argument("--sink_len", type=int, default=defaults.sink_len, help="sinks of VATP and StreamingLLM")
    p.add_argument("--vnorm", choices=VALUE_NORMS, default=PAPERS_VALUE_TERM[0],
                   help="with --vepsilon and --vstage (pred.py's): also run each method's VATP with these value-term "
                        "options, beside the paper's")
    p.add_argument("--vepsilon", type=float, default=PAPERS_VALUE_TERM[1])
    p.add_argument("--vstage", type=float, default=PAPERS_VALUE_TERM[2])
    p.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a name from config/model2path.json")
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Run the grid: 0 when done; 2 with one ``needle: error:`` line; 130 with one line on Ctrl-C."""
    from ..longbench.data import UsageError
    from ..longbench.models import ModelLoadError
    from ..methods import BudgetError

    args = parse_args(argv)
    try:
        run_grid(args)
    except (UsageError, ModelLoadError, BudgetError, RunIOError, ValueError, OSError) as err:
        print(f"needle: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"needle: interrupted: {kept_results(args.out / RESULTS)}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


def run_grid(args) -> None:
    """Check the flags and the results so far (changing nothing), run the points left, then draw and tabulate."""
    from ..longbench.data import resolve_model
    from ..longbench.models import load_model_and_tokenizer

    grid = NeedleGrid(tuple(args.lengths), tuple(args.depths), tuple(args.budgets), tuple(args.methods),
                      args.sink_len, args.backend, args.max_new_tokens, (args.vnorm, args.vepsilon, args.vstage))
    run = {"model": args.model, "dtype": args.dtype, "sink_len": args.sink_len, "max_new_tokens": args.max_new_tokens}
    path = args.out / RESULTS
    refuse_links([path])  # (appending through one would write, and cutting a partial line truncate, its target)
    results = read_results(path)
    check_same_run(results, run)
    todo = pending(grid, results)
    print(f"{len(todo)} points to run, {len(results)} already in {path}", flush=True)
    if todo:  # (with none left, the results, and so the folder, are there)
        model, tokenizer = load_model_and_tokenizer(resolve_model(args.model)[0], args.dtype, args.device)
        longest = max(grid.lengths) + grid.max_new_tokens
        if longest > model.config.max_position_embeddings:
            raise ValueError(f"{args.model} reads at most {model.config.max_position_embeddings} tokens; "
                             f"lower --lengths (the longest prompt and answer take {longest})")
        args.out.mkdir(parents=True, exist_ok=True)
        if drop_partial_line(path):
            print(f"{path}: dropped a half-written last line", flush=True)
        run_points(model, tokenizer, args.model, grid, todo, path, run)
    results = read_results(path)
    title = f"Needle in a haystack: {args.model}, greedy, sink_len {args.sink_len}"
    save_figure(heatmap_figure(results, grid.columns(), list(grid.budgets), title), args.out / FIGURE, dpi=110)
    table = needle_markdown(results, grid, title)
    write_text_file(args.out / TABLE, table)
    print(f"{table}\nwrote {args.out / FIGURE} and {args.out / TABLE}")


def kept_results(path: Path) -> str:
    """How many results ``path`` holds, for the Ctrl-C line."""
    try:
        count = len(read_results(path))
    except (ValueError, OSError):
        return f"the results so far are kept in {path}"
    return f"{count} result{'s' * (count != 1)} kept in {path}"


if __name__ == "__main__":
    sys.exit(main())
