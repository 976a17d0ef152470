"""Compare methods on LongBench: a markdown table and a bar chart from eval.py's result.json files.

    python -m vatp.analysis.report --run "Full cache=pred_full/MODEL" --run "H2O=pred_h2o/MODEL" --out report
    python -m vatp.analysis.report --run "H2O=pred_h2o/MODEL" --run "H2O+VATP=pred_vatp/MODEL" \
        --pair "H2O+VATP=H2O" --out report

Each ``--run LABEL=FOLDER`` names a folder holding the ``result.json`` that
``eval.py`` wrote: dataset -> score, or (``--e``) dataset -> {"0-4k": s|null,
"4-8k": s|null, "8k+": s|null}. A LongBench-E entry becomes the unweighted
mean of its non-empty buckets (the caption says which runs). NaN, which
LongBench's own eval.py writes for an empty bucket, counts as null: no score. Writes
``OUT/report.md`` (methods x datasets, an Average column, best in bold) and
``OUT/report.png`` (grouped bars), and prints the table. Each ``--pair
LABEL=BASELINE`` adds a row to a table of paired differences (LABEL - BASELINE)
with bootstrap 95% intervals over prompts (:mod:`.paired`), read from the two
folders' prediction files.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from ..longbench.evaluate import RESULT_NAME, EvalError, prediction_files, sample_scores
from ..longbench.metrics import BUCKETS
from .output import save_figure, write_text_file
from .paired import AVERAGE, RESAMPLES, SEED, Interval, PairingError, paired_comparison, verdict

MARK = "†"  # flags an Average taken over fewer datasets than the table has


class ReportError(Exception):
    """A problem with the inputs that the user has to fix; the message says how."""


@dataclass
class Run:
    """One method's scores: dataset -> score (None: no score)."""

    label: str
    scores: dict[str, float | None]
    bucketed: bool = False  # read from a LongBench-E (--e) result

    def average(self) -> float | None:
        """Unweighted mean over the datasets this run has, to 2 decimals."""
        values = [v for v in self.scores.values() if v is not None]
        return round(sum(values) / len(values), 2) if values else None


def parse_run(spec: str) -> tuple[str, Path]:
    """``"LABEL=FOLDER"`` -> (label, folder); the label may hold spaces, not '='."""
    label, sep, folder = spec.partition("=")
    if not sep or not label.strip() or not folder.strip():
        raise ReportError(f"--run {spec!r} must be LABEL=FOLDER, e.g. \"H2O=pred_out/llama2-7b-chat-4k\"")
    return label.strip(), Path(folder.strip())


def _is_score(value) -> bool:
    """null or a number, not infinite (NaN is allowed: it is read as null)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and not (isinstance(value, float) and math.isinf(value)))


def _or_none(value: float | None) -> float | None:
    """``value``, with NaN as None: no score, never a number that compares false with every other."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _score(value, path: Path, dataset: str) -> tuple[float | None, bool]:
    """A result.json entry -> (score or None, whether it was bucketed)."""
    if _is_score(value):
        return _or_none(value), False
    if isinstance(value, dict) and set(value) <= set(BUCKETS) and all(_is_score(v) for v in value.values()):
        buckets = [v for v in map(_or_none, value.values()) if v is not None]
        return (round(sum(buckets) / len(buckets), 2) if buckets else None), True
    raise ReportError(f"{path}: {dataset!r} has {value!r}; expected a finite score or null, or a dict of "
                      f"{', '.join(BUCKETS)} -> score|null, as eval.py writes; re-run eval.py on that folder")


def parse_pair(spec: str, labels: list[str]) -> tuple[str, str]:
    """``"LABEL=BASELINE"`` -> (label, baseline), both among ``labels`` (the --run labels)."""
    label, sep, baseline = (part.strip() for part in spec.partition("="))
    if not sep or not label or not baseline:
        raise ReportError(f"--pair {spec!r} must be LABEL=BASELINE, e.g. \"H2O+VATP=H2O\"")
    unknown = [name for name in (label, baseline) if name not in labels]
    if unknown:
        raise ReportError(f"--pair {spec!r} names {', '.join(map(repr, unknown))}, not a --run label; "
                          f"the labels are {', '.join(map(repr, labels))}")
    return label, baseline


def load_run(label: str, folder: Path) -> Run:
    """Read ``FOLDER/result.json`` into a :class:`Run`."""
    path = folder / RESULT_NAME
    if not path.is_file():
        raise ReportError(f"{path} not found: run eval.py first "
                          f"(python eval.py --model {folder.name} --save {folder.parent})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"cannot read {path}: {err}; re-run eval.py on that folder") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds {type(data).__name__}, not a dataset -> score object; re-run eval.py")
    scores, bucketed = {}, False
    for dataset, value in data.items():
        scores[dataset], was_bucketed = _score(value, path, dataset)
        bucketed |= was_bucketed
    return Run(label, scores, bucketed)


def load_samples(folder: Path) -> dict[str, dict]:
    """Per-sample scores of a run folder's prediction files: dataset -> {sample id: score}."""
    try:
        return {path.name[: -len(".jsonl")]: sample_scores(path) for path in prediction_files(folder)}
    except EvalError as err:
        raise ReportError(str(err)) from None


def compare(base: Path, other: Path) -> dict[str, Interval]:
    """``other - base`` on the same prompts: dataset (and AVERAGE) -> mean difference with its interval."""
    try:
        return paired_comparison(load_samples(base), load_samples(other))
    except PairingError as err:
        raise ReportError(f"cannot pair {other} with {base}: {err}") from None


def datasets_of(runs: list[Run]) -> list[str]:
    """Every dataset of any run, in order of first appearance."""
    return list(dict.fromkeys(d for run in runs for d in run.scores))


def _cell(value: float | None, best: float | None) -> str:
    if value is None:
        return ""
    text = f"{value:.2f}"
    return f"**{text}**" if best is not None and round(value, 2) == best else text


def _best(values: list) -> float | None:
    values = [round(v, 2) for v in values if v is not None]
    return max(values) if values else None


def markdown_table(runs: list[Run]) -> str:
    """Methods x datasets markdown table with an Average column; best per column in bold.

    A run without some dataset gets a blank cell and its Average, over the
    datasets it has, is marked; only runs with every dataset compete for the
    best Average.
    """
    datasets = datasets_of(runs)
    header = ["Method", *datasets, "Average"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    best = {d: _best([run.scores.get(d) for run in runs]) for d in datasets}
    complete = [all(run.scores.get(d) is not None for d in datasets) for run in runs]
    best_average = _best([run.average() for run, full in zip(runs, complete) if full])
    for run, full in zip(runs, complete):
        cells = [_cell(run.scores.get(d), best[d]) for d in datasets]
        if full:
            average = _cell(run.average(), best_average)
        else:
            average = _cell(run.average(), None) + MARK
        lines.append("| " + " | ".join([run.label, *cells, average]) + " |")
    return "\n".join(lines)


def interval_cell(interval: Interval) -> str:
    """``"+1.25 [-0.50, +3.00] tie"``: mean difference, 95% interval, verdict."""
    return f"{interval.mean:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}] {verdict(interval)}"


def paired_table(comparisons: list[tuple[str, dict[str, Interval]]]) -> str:
    """A markdown table: one row per (label, dataset -> Interval) comparison, a column per
    dataset (blank where a comparison lacks it) and the Average."""
    datasets = list(dict.fromkeys(d for _, by_dataset in comparisons for d in by_dataset if d != AVERAGE))
    header = ["Comparison", *datasets, AVERAGE]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for label, by_dataset in comparisons:
        cells = [interval_cell(by_dataset[d]) if d in by_dataset else "" for d in header[1:]]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def paired_caption() -> str:
    """How the paired table is computed and read."""
    return (f"Paired differences on the same prompts (score points, first run minus second): mean [95% bootstrap "
            f"interval over prompts: {RESAMPLES:,} resamples, seed {SEED}, percentile interval; the {AVERAGE} "
            "resamples each dataset's prompts separately and averages the dataset means]. A win or loss only "
            "when the interval excludes 0, else a tie.")


def caption(runs: list[Run]) -> str:
    """What the table shows, including how LongBench-E results were folded into one number."""
    text = ("Scores per dataset (higher is better); the best per dataset is in bold. Average: unweighted "
            "mean over the datasets a run has; the best Average among runs with every dataset is in bold.")
    bucketed = [run.label for run in runs if run.bucketed]
    if bucketed:
        text += (f" LongBench-E results ({', '.join(bucketed)}): each cell is the unweighted mean of the "
                 f"non-empty length buckets ({', '.join(BUCKETS)}).")
    return text


def footnotes(runs: list[Run]) -> list[str]:
    """One line per run that lacks some dataset: which, and what its Average covers."""
    datasets = datasets_of(runs)
    notes = []
    for run in runs:
        missing = [d for d in datasets if run.scores.get(d) is None]
        if missing:
            notes.append(f"{MARK} {run.label}: average over {len(datasets) - len(missing)} of {len(datasets)} "
                         f"datasets; no score for {', '.join(missing)}.")
    return notes


def bar_chart(runs: list[Run]):
    """Grouped bars: one group per dataset plus Average, one bar per run (none where missing)."""
    import numpy as np
    from matplotlib.figure import Figure

    groups = datasets_of(runs) + ["Average"]
    width = 0.8 / len(runs)
    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(groups) + 0.15 * len(groups) * len(runs)), 4.0),
                 layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    for i, run in enumerate(runs):
        values = [run.scores.get(d) for d in groups[:-1]] + [run.average()]
        heights = np.array([np.nan if v is None else v for v in values], dtype=float)
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=run.label)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set(ylabel="score", title="LongBench scores by method")
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def write_report(runs: list[Run], out: Path, paired: list[tuple[str, dict[str, Interval]]] = ()) -> str:
    """Write OUT/report.md and OUT/report.png; return the table with its footnotes (and
    the paired table, if ``paired`` holds comparisons: see :func:`paired_table`)."""
    table = "\n\n".join([markdown_table(runs), *footnotes(runs)])
    if paired:
        table += f"\n\n{paired_caption()}\n\n{paired_table(list(paired))}"
    out.mkdir(parents=True, exist_ok=True)
    save_figure(bar_chart(runs), out / "report.png")
    write_text_file(out / "report.md", f"# LongBench results\n\n{caption(runs)}\n\n{table}\n\n![scores by method]"
                                       "(report.png)\n")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Tabulate and plot eval.py results of several methods.")
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER",
                        help="a method's label and the folder holding its result.json (SAVE/MODEL); repeat")
    parser.add_argument("--pair", action="append", default=[], metavar="LABEL=BASELINE",
                        help="compare two --run labels sample by sample (paired bootstrap 95%% interval of "
                        "LABEL - BASELINE, from their prediction files); repeat")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and report.png")
    args = parser.parse_args(argv)
    try:
        specs = [parse_run(spec) for spec in args.run]
        labels = [label for label, _ in specs]
        if len(set(labels)) != len(labels):
            raise ReportError(f"labels must differ, got {labels}")
        folders = dict(specs)
        pairs = [parse_pair(spec, labels) for spec in args.pair]
        runs = [load_run(label, folder) for label, folder in specs]
        paired = [(f"{label} vs {baseline}", compare(folders[baseline], folders[label])) for label, baseline in pairs]
        table = write_report(runs, args.out, paired)
    except (ReportError, OSError) as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("report: interrupted", file=sys.stderr)
        return 130
    print(table)
    print(f"\nwrote {args.out / 'report.md'} and {args.out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
