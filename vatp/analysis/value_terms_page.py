"""The value-term study's page (``scripts/study.py --value_terms``): which of VATP's value terms helps, and on what.

For each base method (SnapKV, H2O), its runs without a value term, with the paper's VATP and with each
variant of :class:`vatp.methods.value_aware.ValueAware`'s options, at each budget: the averages, every
variant's paired difference from the paper's VATP and from no value term (task average and per task), the
wins, ties and losses per variant, and a chart of the differences from the paper's VATP.

Runs are keyed as the study keys them: scores by ``(tokens, budget, name)`` -> task/Average -> score,
comparisons by ``(tokens, budget, reference, variant)`` -> task/Average -> Interval of ``variant - reference``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .output import save_figure
from .paired import AVERAGE, Interval, verdict
from .report import interval_cell, paired_caption, paired_table


@dataclass(frozen=True)
class Base:
    """A base method, its run with the paper's VATP, and its value-term variants, by the study's names."""

    name: str
    vatp: str
    variants: list[str]


def difference(comparisons: dict, key: tuple, reference: str, name: str) -> dict[str, Interval] | None:
    """``name - reference`` at ``key`` = (tokens, budget), per task and on the average; from either direction of
    the pair (a difference the other way round is negated); None if the two were not compared."""
    if (*key, reference, name) in comparisons:
        return comparisons[(*key, reference, name)]
    if (*key, name, reference) in comparisons:
        return {task: Interval(0.0 - iv.mean, 0.0 - iv.high, 0.0 - iv.low)  # 0.0 - x: never a "-0.00"
                for task, iv in comparisons[(*key, name, reference)].items()}
    return None


def _columns(bases: list[Base], points: list[tuple]) -> list[tuple[Base, tuple]]:
    return [(base, point) for base in bases for point in points]


def _header(labels: dict, columns) -> list[str]:
    names = ["Value term"] + [f"{labels[base.name]} {round(100 * point[1])}%" for base, point in columns]
    return ["| " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(columns)]


def averages_table(scores: dict, bases: list[Base], points: list[tuple], labels: dict, rows: dict) -> str:
    """Task averages: a row per kind of value term (``rows``: row label -> base -> run name), a column per base
    and (tokens, budget) point."""
    columns = _columns(bases, points)
    lines = _header(labels, columns)
    for row, names in rows.items():
        cells = [f"{scores[(*point, names[base.name])][AVERAGE]:.2f}" if (*point, names.get(base.name)) in scores
                 else "" for base, point in columns]
        lines.append("| " + " | ".join([row, *cells]) + " |")
    return "\n".join(lines)


def differences_table(comparisons: dict, bases: list[Base], points: list[tuple], labels: dict, rows: dict,
                      reference: str) -> str:
    """Each row's task-average difference from ``reference`` ("vatp" or "name": the base's run with the paper's
    VATP, or without a value term), with its interval and verdict."""
    columns = _columns(bases, points)
    lines = _header(labels, columns)
    for row, names in rows.items():
        cells = []
        for base, point in columns:
            name, ref = names.get(base.name), getattr(base, reference)
            found = difference(comparisons, point, ref, name) if name and name != ref else None
            cells.append(interval_cell(found[AVERAGE]) if found else "")
        if any(cells):
            lines.append("| " + " | ".join([row, *cells]) + " |")
    return "\n".join(lines)


def verdict_table(comparisons: dict, bases: list[Base], points: list[tuple], labels: dict) -> str:
    """Per variant, wins, ties and losses over its tasks and points, against the paper's VATP and against no
    value term."""
    lines = ["| variant | against | wins | ties | losses |", "| --- | --- | ---: | ---: | ---: |"]
    for base in bases:
        for name in base.variants:
            for against, reference in (("VATP", base.vatp), ("no value term", base.name)):
                verdicts = [verdict(iv) for point in points
                            for task, iv in (difference(comparisons, point, reference, name) or {}).items()
                            if task != AVERAGE]
                if verdicts:
                    lines.append(f"| {labels[name]} | {against} | {verdicts.count('win')} | {verdicts.count('tie')} "
                                 f"| {verdicts.count('loss')} |")
    return "\n".join(lines)


def per_task_tables(comparisons: dict, bases: list[Base], points: list[tuple], labels: dict) -> str:
    """For each base and point, every variant's per-task difference from the paper's VATP and from no value term."""
    sections = []
    for base in bases:
        for point in points:
            rows = [(f"{labels[name]} − {labels[reference]}", found) for name in base.variants
                    for reference in (base.vatp, base.name)
                    if (found := difference(comparisons, point, reference, name))]
            if rows:
                sections.append(f"#### {labels[base.name]}, ~{point[0]} tokens, {round(100 * point[1])}% budget\n\n"
                                + paired_table(rows))
    return "\n\n".join(sections)


def forest_chart(comparisons: dict, bases: list[Base], points: list[tuple], labels: dict, path: Path) -> None:
    """One panel per base: each variant's task-average difference from the paper's VATP (no value term included),
    with its 95% interval, a marker per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bases), figsize=(6 * len(bases), 3.6), sharex=True, squeeze=False,
                             layout="constrained")
    for ax, base in zip(axes[0], bases):
        names = [base.name, *base.variants]
        for i, point in enumerate(points):
            found = [difference(comparisons, point, base.vatp, name) for name in names]
            rows = [(y, f[AVERAGE]) for y, f in enumerate(found) if f]
            y = [r + 0.15 * (i - (len(points) - 1) / 2) for r, _ in rows]
            mean = [iv.mean for _, iv in rows]
            err = [[iv.mean - iv.low for _, iv in rows], [iv.high - iv.mean for _, iv in rows]]
            ax.errorbar(mean, y, xerr=err, fmt="o", capsize=2, label=f"{round(100 * point[1])}% budget, "
                        f"~{point[0]} tokens", color=f"C{i}")
        ax.axvline(0, color="black", linewidth=1)
        ax.set_yticks(range(len(names)), [labels[name] for name in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{labels[base.name]}: difference from {labels[base.vatp]}")
        ax.set_xlabel("task-average score difference (95% paired CI)")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def page(scores: dict, comparisons: dict, bases: list[Base], points: list[tuple], labels: dict, rows: dict,
         chart: str) -> str:
    """value_terms.md's text below its title; ``rows``: row label -> base -> run name, for the tables of averages
    and differences; ``chart``: the chart's file name, beside the page."""
    return ("### Task averages\n\n" + averages_table(scores, bases, points, labels, rows)
            + f"\n\n![differences from the paper's VATP]({chart})\n\n"
            + "### Against the paper's VATP (task average)\n\n" + paired_caption() + "\n\n"
            + differences_table(comparisons, bases, points, labels, rows, "vatp")
            + "\n\n### Against no value term (task average)\n\n"
            + differences_table(comparisons, bases, points, labels, rows, "name")
            + "\n\n### Wins, ties and losses per task (all budgets)\n\n" + verdict_table(comparisons, bases, points,
                                                                                       labels)
            + "\n\n### Per task\n\n" + per_task_tables(comparisons, bases, points, labels) + "\n")
