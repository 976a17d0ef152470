"""Paired statistics: is a VATP variant better than its baseline by more than the noise?

Both runs answer the same prompts, so the comparison is paired: per sample, the
difference of the two scores (``other - base``, in score points, 0-100). The
uncertainty of a mean comes from a percentile bootstrap over prompts:

* ``RESAMPLES`` (10,000) resamples, drawn with ``numpy.random.default_rng(SEED)``
  (``SEED = 0``) as one ``integers(0, n, size=(RESAMPLES, n))`` call;
* the interval is ``numpy.percentile(means, [2.5, 97.5])`` (linear interpolation);
* each task starts a fresh generator from ``SEED``, so a task's interval does not
  depend on which other tasks are reported;
* the task average is stratified: one generator from ``SEED`` draws the prompts of
  each task in turn (tasks in sorted order), and every resample averages the task
  means, as the average score itself is an unweighted mean over tasks.

A comparison is a ``"win"`` or a ``"loss"`` only when its interval excludes 0;
otherwise it is a ``"tie"``. Scores come as ``{task: {sample_id: score}}``
(:func:`vatp.longbench.evaluate.sample_scores` reads them from a prediction file).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 0
PERCENTILES = (2.5, 97.5)  # a central 95% interval
AVERAGE = "Average"  # the key of the task average among the per-task results


class PairingError(ValueError):
    """Two runs that cannot be compared sample by sample; the message says why."""


@dataclass(frozen=True)
class Interval:
    """A mean (of scores or of score differences) and its bootstrap 95% interval."""

    mean: float
    low: float
    high: float


def verdict(interval: Interval) -> str:
    """``"win"`` if the interval lies above 0, ``"loss"`` if below, else ``"tie"``."""
    if interval.low > 0:
        return "win"
    if interval.high < 0:
        return "loss"
    return "tie"


def _preview(keys) -> str:
    """At most five keys, for an error message."""
    keys = sorted(keys, key=str)
    return ", ".join(map(repr, keys[:5])) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def differences(base: Mapping, other: Mapping, task: str = "") -> np.ndarray:
    """Per-sample ``other - base`` of one task, in ``base``'s sample order: shape ``(n,)``.

    ``base`` and ``other`` map sample ids to scores; a PairingError unless they
    hold the same ids.
    """
    if set(base) != set(other):
        only_base, only_other = set(base) - set(other), set(other) - set(base)
        parts = ([f"only the baseline has {_preview(only_base)}"] if only_base else []) + \
                ([f"only the other run has {_preview(only_other)}"] if only_other else [])
        raise PairingError(f"the two runs do not hold the same samples{' on ' + task if task else ''}: "
                           f"{'; '.join(parts)}. Compare runs made on the same data, each finished "
                           "(pred.py resumes an unfinished one).")
    if not base:
        raise PairingError(f"no samples to compare{' on ' + task if task else ''}")
    return np.array([other[key] - base[key] for key in base], dtype=float)


def bootstrap_means(values: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement) of ``values`` (n,): shape ``(resamples,)``."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D array of scores, got shape {values.shape}")
    picks = rng.integers(0, values.size, size=(resamples, values.size))  # (resamples, n)
    return values[picks].mean(axis=1)


def percentile_interval(mean: float, means: np.ndarray) -> Interval:
    """``mean`` with the central 95% percentile interval of the bootstrap ``means``."""
    low, high = np.percentile(means, PERCENTILES)
    return Interval(float(mean), float(low), float(high))


def mean_interval(values, seed: int = SEED, resamples: int = RESAMPLES) -> Interval:
    """The mean of ``values`` (n,) and its bootstrap interval, from a generator seeded ``seed``."""
    values = np.asarray(values, dtype=float)
    return percentile_interval(values.mean(), bootstrap_means(values, np.random.default_rng(seed), resamples))


def stratified_interval(per_task: Mapping, seed: int = SEED, resamples: int = RESAMPLES) -> Interval:
    """The unweighted mean of the task means, and its interval from resampling each task's
    prompts independently (``per_task``: task -> values (n_task,))."""
    if not per_task:
        raise ValueError("no tasks to average")
    rng = np.random.default_rng(seed)
    tasks = sorted(per_task)
    task_means = np.stack([bootstrap_means(per_task[t], rng, resamples) for t in tasks])  # (tasks, resamples)
    mean = np.mean([np.mean(per_task[t]) for t in tasks])
    return percentile_interval(mean, task_means.mean(axis=0))


def _with_average(per_task: dict, seed: int, resamples: int) -> dict:
    """task -> Interval for every task, plus AVERAGE -> the stratified interval."""
    intervals = {task: mean_interval(values, seed, resamples) for task, values in per_task.items()}
    return intervals | {AVERAGE: stratified_interval(per_task, seed, resamples)}


def paired_comparison(base: Mapping, other: Mapping, seed: int = SEED, resamples: int = RESAMPLES) -> dict:
    """``other - base`` per task and for the task average: task -> Interval of the mean difference.

    ``base`` and ``other`` map task -> {sample_id: score}; a PairingError unless they
    have the same tasks and, in each, the same sample ids (in any order).
    """
    if set(base) != set(other):
        raise PairingError(f"the two runs do not have the same tasks: the baseline has {_preview(base)}, "
                           f"the other run {_preview(other)}; compare runs made on the same datasets")
    per_task = {task: differences(base[task], other[task], task) for task in base}
    return _with_average(per_task, seed, resamples)


def score_intervals(run: Mapping, seed: int = SEED, resamples: int = RESAMPLES) -> dict:
    """One run's mean score per task and for the task average, with intervals (for error bars).

    ``run`` maps task -> {sample_id: score}.
    """
    per_task = {task: np.array(list(scores.values()), dtype=float) for task, scores in run.items()}
    return _with_average(per_task, seed, resamples)
