"""Reproduction study: does value awareness help, and where? (the grid behind RESULTS.md)

    python scripts/study.py --out study_out                          # CPU: embedded model, 2 lengths
    python scripts/study.py --out study_gpu --tokens 4000 8000 --samples 50 --budgets 0.2 0.5 \
        --device cuda --dtype float16 --backend evict --batch_size 50 --jobs 8 --predict_only   # on the GPU
    python scripts/study.py --out study_gpu --tokens 4000 8000 --samples 50 --budgets 0.2 0.5 --report_only

For each context length it builds the offline suite (its default tasks), then
runs pred.py and eval.py for: the full cache; H2O, Scissorhands, SnapKV and
TOVA, each with and without VATP; CriticalKV, KNorm and a StreamingLLM-style
baseline (sinks + recent) at budgets of 20%, 35% and 50% of the prompt
(heavy_ratio = budget / 2); ``--methods`` runs and reports some of them. Finished
runs are reused: pred.py resumes a run, and one whose result.json is newer than
its predictions is skipped. ``--report_only`` generates nothing: it scores
(eval.py) the points whose predictions are complete and reports them, listing
the missing ones. ``--predict_only`` only generates (pred.py): for a machine
without the metrics' packages, such as the GPU machine; score and report the
predictions elsewhere with ``--report_only``. The flags are checked before
anything runs; a problem, or a step that fails, stops the study with one
``study.py: error:`` line (exit status 2, or the failed step's), and Ctrl-C
with one line (130): rerun the same command to resume.

Each VATP variant is compared with its baseline on the same prompts, and
SnapKV+VATP with CriticalKV (the two value weightings on SnapKV's scores),
(``vatp.analysis.paired``): the mean per-sample score difference with a paired
bootstrap 95% interval, per task and for the task average; a win or loss only
when the interval excludes 0. Writes ``OUT/study.md`` (per length and budget:
the scores and the paired differences; then VATP's per-task win/tie/loss count
against its baseline), a report (``vatp.analysis.report``) per length and
budget, ``OUT/averages.png`` (average score against budget, per length, with
bootstrap 95% error bars over prompts), ``OUT/scores.json`` and
``OUT/intervals.json`` (the intervals behind the tables and error bars).

``--value_terms`` adds VATP's value-term variants on SnapKV and H2O (the options of
:class:`vatp.methods.value_aware.ValueAware`: epsilon, L2, the value projected through ``o_proj``,
CriticalKV's recipe) and writes ``OUT/value_terms.md`` and ``OUT/value_terms.png``
(:mod:`vatp.analysis.value_terms_page`): each variant against the paper's VATP and against no value term.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from vatp.analysis.output import save_figure, write_text_file
from vatp.analysis.paired import AVERAGE, PairingError, paired_comparison, score_intervals, verdict
from vatp.longbench.prediction_files import RunIOError, open_no_link
from vatp.longbench.runs import load_run_record
from vatp.longbench.suite import MIN_TOKENS
from vatp.longbench.suite import TASKS as SUITE
from vatp.names import DTYPE_NAMES, method_label, value_options

TASKS = list(SUITE)  # the offline suite's default tasks
METHODS = {  # name -> (label, pred.py flags), run in this order: the head-to-head of value weightings first
    "snapkv": ("SnapKV", ["--method", "snapkv"]),
    "snapkv_vatp": ("SnapKV+VATP", ["--method", "snapkv", "--apval"]),
    "criticalkv": ("CriticalKV", ["--method", "criticalkv"]),
    "h2o": ("H2O", ["--h2o"]),
    "h2o_vatp": ("H2O+VATP", ["--h2o", "--apval"]),
    "scissorhands": ("Scissorhands", []),
    "scissorhands_vatp": ("Scissorhands+VATP", ["--apval"]),
    "tova": ("TOVA", ["--method", "tova"]),
    "tova_vatp": ("TOVA+VATP", ["--method", "tova", "--apval"]),
    "knorm": ("KNorm", ["--method", "knorm"]),
    "streaming": ("StreamingLLM", ["--method", "streaming"]),
}
# RESULTS.md's "Which value term" (--value_terms): VATP's options on SnapKV and on H2O. The epsilon scaled to the
# score range is 1e-4 per query summed, CriticalKV's 1e-4 on the mean attention: SnapKV sums its 32 window
# queries (3.2e-3), H2O every prompt query, about 1,000 at these lengths (0.1). The last option, without sinks,
# is CriticalKV's recipe: on SnapKV, the criticalkv method itself. Its first stage keeps about half the budget
# beyond the recent window by attention alone: a share of 0.5 of the total on SnapKV (whose window is 32 tokens),
# 0.75 on H2O (whose recent half would take all of 0.5).
SCALED_EPSILON = {"snapkv": 32e-4, "h2o": 0.1}
FIRST_STAGE = {"snapkv": 0.5, "h2o": 0.75}
VALUE_OPTIONS = {  # tag -> base -> (vnorm, vepsilon, vstage, sinks kept)
    "eps": lambda base: ("l1", 0.01, 0.0, True),
    "eps_scaled": lambda base: ("l1", SCALED_EPSILON[base], 0.0, True),
    "l2": lambda base: ("l2", 0.0, 0.0, True),
    "wo_l1": lambda base: ("wo_l1", 0.0, 0.0, True),
    "critical": lambda base: ("wo_l1", SCALED_EPSILON[base], FIRST_STAGE[base], False),
}


def value_term_variants() -> dict[str, tuple[str, list[str]]]:
    """name -> (label, pred.py flags) of each value-term variant, ``snapkv_vatp_eps`` and so on."""
    variants = {}
    for base in SCALED_EPSILON:
        for tag, options in VALUE_OPTIONS.items():
            vnorm, epsilon, stage, sinks = options(base)
            flags = [*METHODS[base][1], "--apval", *["--vnorm", vnorm] * (vnorm != "l1"),
                     *["--vepsilon", str(epsilon)] * bool(epsilon), *["--vstage", str(stage)] * bool(stage),
                     *["--sink_len", "0"] * (not sinks)]
            variants[f"{base}_vatp_{tag}"] = (method_label(base, apval=True) + value_options(vnorm, epsilon, stage),
                                              flags)
    return variants


VALUE_TERMS = value_term_variants()
EVERY = METHODS | VALUE_TERMS
# (baseline, value-aware variant): VATP's value weighting against CriticalKV's on the same scorer (SnapKV's
# window scores times ||v||_1, against times ||W_o v||_1 with two stages), then VATP against its method.
PAIRS = [("criticalkv", "snapkv_vatp"), ("snapkv", "snapkv_vatp"), ("h2o", "h2o_vatp"),
         ("scissorhands", "scissorhands_vatp"), ("tova", "tova_vatp")]
# Each value-term variant against the paper's VATP and against no value term, on its base.
VALUE_PAIRS = [(reference, name) for name in VALUE_TERMS for base in [name.split("_")[0]]
               for reference in (f"{base}_vatp", base)]
COLOURS = {"h2o": "C0", "scissorhands": "C2", "streaming": "C4", "snapkv": "C1", "tova": "C3", "criticalkv": "C5",
           "knorm": "C6"}  # a method and its VATP share one


class StudyError(Exception):
    """A flag, folder or file the study cannot use; the message says how to fix it."""


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def complete(data: Path, folder: Path) -> bool:
    """Whether ``folder`` holds a prediction for every sample of every task in ``data``."""
    def lines(path: Path) -> int:
        return path.read_bytes().count(b"\n") if path.is_file() else 0
    return all(lines(folder / f"{t}.jsonl") >= lines(data / f"{t}.jsonl") > 0 for t in TASKS)


def pred_command(args, data: Path, save: Path, flags: list[str]) -> list[str]:
    """The pred.py command of one grid point."""
    return [sys.executable, "pred.py", "--model", args.model, "--data_dir", str(data), "--datasets", *TASKS,
            "--save", str(save), "--backend", args.backend, *(["--device", args.device] if args.device else []),
            "--batch_size", str(args.batch_size), *(["--dtype", args.dtype] if args.dtype else []), *flags]


def point_folder(out: Path, n: int, budget: float, name: str) -> Path:
    """Where the grid point of method ``name`` (or "full") at ~n tokens and ``budget`` saves its predictions."""
    return out / f"t{n}" / ("full" if name == "full" else f"{name}_b{budget}")


def point_flags(name: str, budget: float, sink_len: int) -> list[str]:
    """pred.py's flags for method ``name`` at ``budget`` (heavy_ratio = budget / 2; sinks where the method has them);
    ``"full"``: the full cache."""
    if name == "full":
        return ["--heavy_ratio", "1.0"]
    flags = EVERY[name][1]
    has_sinks = ("--apval" in flags or name == "streaming") and "--sink_len" not in flags
    sink = ["--sink_len", str(sink_len)] if has_sinks else []
    return ["--heavy_ratio", str(budget / 2), *flags, *sink]


def build_suite(args, data: Path, n: int) -> None:
    """The offline suite at ~n tokens, into ``data``."""
    run([sys.executable, "-m", "vatp.longbench.suite", "--out", str(data), "--samples", str(args.samples),
         "--tokens", str(n), "--tasks", *TASKS])


def generate_in_parallel(args, out: Path) -> None:
    """Build each length's suite, then run the grid's unfinished pred.py points ``--jobs`` at a time.

    The points are independent processes writing their own folders, so several can share one GPU
    (a small model's decode is bound by launching kernels, not by the GPU). Each point's output goes to
    its folder's ``pred.log``; a point that fails is reported and the others go on.
    """
    commands = []
    for n in args.tokens:
        data = out / f"data_{n}"
        build_suite(args, data, n)
        grid = [("full", 1.0)] + [(name, b) for b in args.budgets for name in args.methods]
        saves = [(point_folder(out, n, b, name), point_flags(name, b, args.sink_len)) for name, b in grid]
        commands += [(save, pred_command(args, data, save, flags)) for save, flags in saves
                     if not complete(data, save / args.model)]

    def launch(job: tuple[Path, list[str]]) -> tuple[Path, int]:
        save, cmd = job
        save.mkdir(parents=True, exist_ok=True)
        with open(save / "pred.log", "a", opener=open_no_link) as log:  # a planted link is refused
            return save, subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode

    print(f"{len(commands)} points to generate, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for save, code in pool.map(launch, commands):
            print(f"{'done' if code == 0 else f'FAILED ({code}), see pred.log'}: {save.relative_to(out)}", flush=True)


def predict(args, data: Path, save: Path, flags: list[str]) -> Path | None:
    """pred.py + eval.py for one grid point, unless its result is already there (None: not scored).

    ``--predict_only`` stops after pred.py; ``--report_only`` runs no pred.py and scores (eval.py,
    no model) a point only once its predictions are complete.
    """
    folder = save / args.model
    result = folder / "result.json"
    preds = [folder / f"{t}.jsonl" for t in TASKS]
    if result.is_file() and all(p.is_file() and p.stat().st_mtime <= result.stat().st_mtime for p in preds):
        return folder
    if not args.report_only:
        run(pred_command(args, data, save, flags))
    elif not complete(data, folder):
        return None
    if args.predict_only:
        return None
    run([sys.executable, "eval.py", "--model", args.model, "--save", str(save)])
    return folder


def pair_label(base: str, vatp: str) -> str:
    """``"H2O+VATP vs H2O"``."""
    return f"{EVERY[vatp][0]} vs {EVERY[base][0]}"


def compare_pairs(samples: dict) -> tuple[dict, list[str]]:
    """Paired comparison of every pair whose two runs are in ``samples`` (name -> task -> {id: score}).

    Returns ((base, vatp) -> task/Average -> Interval, and a note per pair whose runs hold different samples).
    """
    comparisons, problems = {}, []
    for base, vatp in PAIRS + VALUE_PAIRS:
        if base in samples and vatp in samples:
            try:
                comparisons[(base, vatp)] = paired_comparison(samples[base], samples[vatp])
            except PairingError as err:
                problems.append(f"{pair_label(base, vatp)}: {err}")
    return comparisons, problems


def verdict_counts(comparisons: dict, tokens: list[int], budgets: list[float]) -> list[str]:
    """Per task, VATP against its baseline: wins, ties, losses (by the paired interval) over all
    lengths and budgets, for each pair compared at least once; ``comparisons`` maps
    (tokens, budget, base, vatp) -> task/Average -> Interval."""
    lines = ["| pair | task | wins | ties | losses |", "|---|---|---|---|---|"]
    for base, vatp in PAIRS + VALUE_PAIRS:
        found = [comparisons[(n, b, base, vatp)] for n in tokens for b in budgets if (n, b, base, vatp) in comparisons]
        if not found:
            continue
        tasks = list(dict.fromkeys(t for c in found for t in c if t != AVERAGE))
        total = [0, 0, 0]
        for task in tasks + [AVERAGE]:
            verdicts = [verdict(c[task]) for c in found if task in c]
            counts = [verdicts.count(v) for v in ("win", "tie", "loss")]
            lines.append(f"| {pair_label(base, vatp)} | {task} | {counts[0]} | {counts[1]} | {counts[2]} |")
            if task != AVERAGE:
                total = [a + c for a, c in zip(total, counts)]
        lines.append(f"| {pair_label(base, vatp)} | **all tasks** | {total[0]} | {total[1]} | {total[2]} |")
    return lines


def averages_chart(scores: dict, intervals: dict, tokens: list[int], budgets: list[float], path: Path) -> None:
    """Average score against budget, one panel per context length; the full cache as a black line.

    ``intervals`` maps (tokens, budget, name) -> the Interval of that run's average; it draws
    the error bars (methods are nudged sideways so that the bars do not overlap) and the
    full cache's grey band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tokens), figsize=(5 * len(tokens) + 2, 3.8), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, n in zip(axes[0], tokens):
        for i, (name, (label, _)) in enumerate(METHODS.items()):
            keys = [(n, b, name) for b in budgets if (n, b, name) in scores]
            x = [100 * b + 0.6 * (i - (len(METHODS) - 1) / 2) for _, b, _ in keys]
            y = [scores[k][AVERAGE] for k in keys]
            yerr = [[max(0.0, scores[k][AVERAGE] - intervals[k].low) for k in keys],
                    [max(0.0, intervals[k].high - scores[k][AVERAGE]) for k in keys]]
            family, vatp = name.removesuffix("_vatp"), name.endswith("_vatp")
            ax.errorbar(x, y, yerr=yerr, marker="o", capsize=2, label=label, color=COLOURS[family],
                        markerfacecolor=None if vatp else "white",  # filled: VATP; hollow: its baseline
                        linestyle="-" if vatp else "--" if family not in ("streaming", "knorm") else ":")
        if (n, 1.0, "full") in scores:
            ax.axhline(scores[(n, 1.0, "full")][AVERAGE], color="black", linewidth=1, label="Full cache")
            ax.axhspan(intervals[(n, 1.0, "full")].low, intervals[(n, 1.0, "full")].high, color="black", alpha=0.08)
        ax.set_title(f"~{n}-token contexts")
        ax.set_xlabel("KV budget, % of the prompt")
    axes[0][0].set_ylabel("average score (95% CI over prompts)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=8, loc="outside right center")
    save_figure(fig, path, dpi=110)


def interval_json(interval) -> dict:
    """An Interval as JSON."""
    return {"mean": interval.mean, "low": interval.low, "high": interval.high}


class Findings:
    """What the grid found, keyed by (tokens, budget, name) or, for comparisons, (tokens, budget, base, vatp)."""

    def __init__(self):
        self.scores = {}  # -> task/Average -> score (as result.json and the report)
        self.intervals = {}  # -> Interval of the run's average
        self.comparisons = {}  # -> task/Average -> Interval of VATP - baseline
        self.sections = []  # study.md's section per length and budget
        self.missing = []  # points not run
        self.problems = []  # pairs whose runs hold different samples
        self.recorded = {"backend": set(), "dtype": set()}  # as the runs' records say, not this call's flags

    def add_run(self, key: tuple, run, samples: dict, folder: Path) -> None:
        """Record one finished run: its scores, the interval of its average and its backend."""
        self.scores[key] = {**run.scores, AVERAGE: run.average()}
        self.intervals[key] = score_intervals(samples)[AVERAGE]
        for task in samples:
            if record := load_run_record(folder, task):
                for key, values in self.recorded.items():
                    values.add(str(record["settings"].get(key)))


def scored_run(label: str, folder: Path):
    """A scored point: its result.json as a report Run, and its per-sample scores; StudyError if unreadable."""
    from vatp.analysis.report import ReportError, load_run, load_samples

    try:
        return load_run(label, folder), load_samples(folder)
    except ReportError as err:
        raise StudyError(str(err)) from None


def budget_point(args, data: Path, out: Path, n: int, b: float, full_run, found: Findings) -> None:
    """Run (or reuse) every method at ~n tokens and budget b; add its scores, comparisons and section."""
    if args.predict_only:  # generate only: the report needs the metrics' packages (rouge, jieba)
        for name in args.methods:
            predict(args, data, point_folder(out, n, b, name), point_flags(name, b, args.sink_len))
        return
    from vatp.analysis.report import markdown_table, paired_table, write_report

    runs, samples = [full_run] if full_run else [], {}
    for name in args.methods:
        label = EVERY[name][0]
        folder = predict(args, data, point_folder(out, n, b, name), point_flags(name, b, args.sink_len))
        if folder is None:
            found.missing.append(f"{label} at ~{n} tokens, {round(100 * b)}% budget")
            continue
        run, samples[name] = scored_run(label, folder)
        found.add_run((n, b, name), run, samples[name], folder)
        if name in METHODS:  # the value-term variants have their own page, value_terms.md
            runs.append(run)
    if not runs:
        return
    comparisons, problems = compare_pairs(samples)
    found.problems += [f"~{n} tokens, {round(100 * b)}% budget, {p}" for p in problems]
    found.comparisons |= {(n, b, *pair): c for pair, c in comparisons.items()}
    paired = [(pair_label(*pair), c) for pair, c in comparisons.items() if pair in PAIRS]  # variants: value_terms.md
    write_report(runs, out / f"report_t{n}_b{b}", paired)
    found.sections.append(f"### ~{n}-token contexts, {round(100 * b)}% budget\n\n{markdown_table(runs)}\n\n"
                          + (f"{paired_table(paired)}\n\n" if paired else "")
                          + f"![chart](report_t{n}_b{b}/report.png)\n")


def study_text(args, command: str, found: Findings) -> str:
    """study.md: the averages chart, a section per length and budget, the verdict counts, what is missing."""
    from vatp.analysis.report import paired_caption

    recorded = ", ".join(f"{key} {'/'.join(sorted(values))}" for key, values in found.recorded.items() if values)
    return (f"# Study: {args.model}, {args.samples} samples per task and length, sink_len {args.sink_len}, "
            f"{recorded or 'backend ' + args.backend}\n\nCommand: `python scripts/study.py {command}`\n\n"
            + ("![averages](averages.png)\n\nError bars: bootstrap 95% interval of each run's average over its "
               "prompts (each task's prompts resampled separately).\n\n" if found.scores else "")
            + f"Below each score table: {paired_caption()}\n\n" + "\n".join(found.sections)
            + "\n### Value-aware variant against its baseline, per task (all lengths and budgets, by the paired interval)\n\n"
            + "\n".join(verdict_counts(found.comparisons, args.tokens, args.budgets)) + "\n"
            + ("\nNot run: " + "; ".join(found.missing) + ".\n" if found.missing else "")
            + ("\nNot compared: " + "; ".join(found.problems) + "\n" if found.problems else ""))


VALUE_TERM_ROWS = {  # the value-term page's rows: what each variant weights by -> base -> run
    "none (the method alone)": {base: base for base in SCALED_EPSILON},
    "‖v‖₁: the paper's VATP (sinks 20)": {base: f"{base}_vatp" for base in SCALED_EPSILON},
    **{label: {base: f"{base}_vatp_{tag}" for base in SCALED_EPSILON} for tag, label in (
        ("eps", "(s + 0.01)·‖v‖₁"),
        ("eps_scaled", "(s + ε)·‖v‖₁, ε scaled: 1e-4 per query summed (SnapKV 3.2e-3, H2O 0.1)"),
        ("l2", "‖v‖₂"),
        ("wo_l1", "‖W_o v‖₁"),
        ("critical", "(s + ε scaled)·‖W_o v‖₁, two stages, no sinks: CriticalKV's recipe"))},
    "CriticalKV, the method": {"snapkv": "criticalkv"},
}


def value_terms_text(args, command: str, found: Findings, chart: Path) -> str:
    """value_terms.md: the value-term variants against the paper's VATP and against no value term; draws ``chart``."""
    from vatp.analysis import value_terms_page

    bases = [value_terms_page.Base(base, f"{base}_vatp", [v for v in VALUE_TERMS if v.startswith(f"{base}_vatp_")
                                                          and v in args.methods]) for base in SCALED_EPSILON]
    labels = {name: label for name, (label, _) in EVERY.items()}
    points = [(n, b) for n in args.tokens for b in args.budgets]
    value_terms_page.forest_chart(found.comparisons, bases, points, labels, chart)
    return (f"# Which value term? VATP's options on SnapKV and H2O\n\nCommand: `python scripts/study.py {command}`"
            f"\n\n" + value_terms_page.page(found.scores, found.comparisons, bases, points, labels, VALUE_TERM_ROWS,
                                            chart.name))


def intervals_json(found: Findings) -> str:
    """intervals.json: each run's average and each comparison, with their intervals."""
    return json.dumps({
        "averages": {f"{n}|{b}|{m}": interval_json(iv) for (n, b, m), iv in found.intervals.items()},
        "paired": {f"{n}|{b}|{base}|{vatp}": {task: {**interval_json(iv), "verdict": verdict(iv)}
                                               for task, iv in c.items()}
                   for (n, b, base, vatp), c in found.comparisons.items()}}, indent=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="study_out")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, nargs="+", default=[1000, 2000], help="context lengths (approx. tokens)")
    p.add_argument("--samples", type=int, default=4, help="samples per task and length")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.35, 0.5], help="KV budget, share of the prompt")
    p.add_argument("--methods", nargs="+", choices=list(EVERY), default=list(METHODS),
                   help="the methods to run and report, besides the full cache (default: all but the value-term "
                        "variants, in this order)")
    p.add_argument("--value_terms", action="store_true",
                   help="also run VATP's value-term variants on SnapKV and H2O (RESULTS.md's 'Which value term'), "
                        "and write value_terms.md")
    p.add_argument("--sink_len", type=int, default=20, help="sinks of VATP and StreamingLLM (the paper's 20)")
    p.add_argument("--backend", default="mask", choices=["mask", "evict"])
    p.add_argument("--batch_size", type=int, default=1, help="pred.py's --batch_size (the predictions do not change)")
    p.add_argument("--device", default=None)
    p.add_argument("--jobs", type=int, default=1,
                   help="pred.py processes at a time (a GPU takes several); with more than 1, the whole grid is "
                        "generated first, then scored and reported as --report_only does")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="pred.py's --dtype (default: pred.py's)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--report_only", action="store_true",
                      help="generate nothing; score and report the points whose predictions are complete")
    only.add_argument("--predict_only", action="store_true", help="only generate: no eval.py, no report")
    args = p.parse_args(argv)
    if args.value_terms:  # the variants, and what they are compared with
        args.methods += [m for m in ("snapkv", "snapkv_vatp", "criticalkv", "h2o", "h2o_vatp", *VALUE_TERMS)
                         if m not in args.methods]
    return args


def check_args(args) -> None:
    """StudyError for a value the grid cannot use, before anything runs (the suite, pred.py and eval.py
    would each stop on it, some only after hours of others' work)."""
    for name in ("tokens", "budgets", "methods"):
        values = getattr(args, name)
        if repeated := sorted({v for v in values if values.count(v) > 1}):
            raise StudyError(f"--{name} repeats {', '.join(map(str, repeated))}; give each value once")
    if min(args.tokens) < MIN_TOKENS:
        raise StudyError(f"--tokens must be >= {MIN_TOKENS} (the offline suite's smallest context), got "
                         f"{min(args.tokens)}")
    if not all(0.0 < b <= 1.0 for b in args.budgets):
        raise StudyError(f"--budgets must be shares of the prompt in (0, 1], got {args.budgets}")
    for name in ("samples", "batch_size", "jobs"):
        if getattr(args, name) < 1:
            raise StudyError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.sink_len < 0:
        raise StudyError(f"--sink_len must be >= 0, got {args.sink_len}")
    if args.report_only and not Path(args.out).is_dir():
        raise StudyError(f"--out {args.out} is not a folder, so there is nothing to report; give the --out of a "
                         "study, or run without --report_only first")


def main(argv=None) -> int:
    """Run the study: 0 when done; 2 with one ``study.py: error:`` line (a failed step: its exit status);
    130 with one line on Ctrl-C."""
    args = parse_args(argv)
    try:
        check_args(args)
        return study(args, " ".join(argv or sys.argv[1:]))
    except (StudyError, RunIOError, OSError) as err:
        print(f"study.py: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"study.py: error: {' '.join(map(str, err.cmd))} exited with status {err.returncode} (its message "
              "is above); fix that, then rerun the same command: finished points are reused", file=sys.stderr)
        return err.returncode if err.returncode > 0 else 2
    except KeyboardInterrupt:
        print("study.py: interrupted; rerun the same command to resume (finished points are reused)",
              file=sys.stderr)
        return 130


def study(args, command: str) -> int:
    """Generate (unless --report_only), score and report the grid; write study.md and the rest."""
    out = Path(args.out).resolve()
    if args.jobs > 1 and not args.report_only:
        generate_in_parallel(args, out)
        if args.predict_only:
            print(f"predictions in {out}; score and report them with --report_only")
            return 0
        args.report_only = True
    found = Findings()
    for n in args.tokens:
        data = out / f"data_{n}"
        if not args.report_only:
            build_suite(args, data, n)
        full = predict(args, data, point_folder(out, n, 1.0, "full"), point_flags("full", 1.0, args.sink_len))
        full_run = None
        if full:  # never with --predict_only, which runs without the report's metrics packages
            full_run, samples = scored_run("Full cache", full)
            found.add_run((n, 1.0, "full"), full_run, samples, full)
        for b in args.budgets:
            budget_point(args, data, out, n, b, full_run, found)
    if args.predict_only:
        print(f"predictions in {out}; score and report them with --report_only")
        return 0
    if found.scores:
        averages_chart(found.scores, found.intervals, args.tokens, args.budgets, out / "averages.png")
    text = study_text(args, command, found)
    write_text_file(out / "study.md", text)
    write_text_file(out / "scores.json", json.dumps({f"{n}|{b}|{m}": s for (n, b, m), s in found.scores.items()},
                                                    indent=1))
    write_text_file(out / "intervals.json", intervals_json(found))
    if set(VALUE_TERMS) & set(args.methods):
        write_text_file(out / "value_terms.md", value_terms_text(args, command, found, out / "value_terms.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
