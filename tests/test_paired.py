"""vatp.analysis.paired on made-up scores whose answer is known, and the per-sample scores it reads."""
import json
import random

import numpy as np
import pytest

from vatp.analysis import paired
from vatp.analysis.paired import AVERAGE, Interval, PairingError
from vatp.longbench.evaluate import EvalError, sample_scores, score_file


def _run(per_task: dict) -> dict:
    """task -> list of scores  ->  task -> {sample id: score}, ids "task-0", "task-1", ..."""
    return {task: {f"{task}-{i}": float(v) for i, v in enumerate(values)} for task, values in per_task.items()}


def _shifted(run: dict, by: float) -> dict:
    return {task: {sid: v + by for sid, v in scores.items()} for task, scores in run.items()}


BASE = _run({"qa": [0, 50, 100, 25, 75], "count": [100, 0, 0, 50], "code": [12, 37, 62]})


def test_identical_runs_tie_at_zero():
    result = paired.paired_comparison(BASE, BASE)
    assert set(result) == {"qa", "count", "code", AVERAGE}
    for interval in result.values():
        assert interval == Interval(0.0, 0.0, 0.0)
        assert paired.verdict(interval) == "tie"


@pytest.mark.parametrize("shift, word", [(5.0, "win"), (-5.0, "loss")])
def test_constant_shift_has_a_zero_width_interval(shift, word):
    for interval in paired.paired_comparison(BASE, _shifted(BASE, shift)).values():
        assert interval == Interval(shift, shift, shift)
        assert paired.verdict(interval) == word


@pytest.mark.parametrize("low, high, word", [(0.01, 2, "win"), (0, 2, "tie"), (-1, 1, "tie"), (-2, 0, "tie"),
                                             (-2, -0.01, "loss")])
def test_verdict_needs_the_interval_to_exclude_zero(low, high, word):
    assert paired.verdict(Interval((low + high) / 2, low, high)) == word


def test_two_samples_give_the_exact_bootstrap_distribution():
    """Differences (0, 10): a resample's mean is 0, 5 or 10 with probability 1/4, 1/2, 1/4,
    so the 2.5th and 97.5th percentiles of 10,000 resamples are 0 and 10."""
    interval = paired.mean_interval([0.0, 10.0])
    assert interval == Interval(5.0, 0.0, 10.0)
    assert paired.verdict(interval) == "tie"


def _percentile(values: list, q: float) -> float:
    """numpy's default ('linear') percentile, by hand."""
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _direct_means(values: list, rng, resamples: int) -> list:
    """Bootstrap means drawn one index at a time (the same stream as paired's (resamples, n) draw)."""
    n = len(values)
    return [sum(values[int(rng.integers(0, n))] for _ in range(n)) / n for _ in range(resamples)]


def test_interval_matches_a_direct_computation_with_the_same_seed():
    diffs = [3.0, -1.0, 4.0, 1.0, -5.0, 9.0, 2.0]
    means = _direct_means(diffs, np.random.default_rng(paired.SEED), 1000)
    interval = paired.mean_interval(diffs, resamples=1000)
    assert interval.mean == pytest.approx(sum(diffs) / len(diffs))
    assert interval.low == pytest.approx(_percentile(means, 2.5), abs=1e-12)
    assert interval.high == pytest.approx(_percentile(means, 97.5), abs=1e-12)
    assert interval.low < interval.mean < interval.high
    other = _run({"t": [10 + d for d in diffs]})
    assert paired.paired_comparison(_run({"t": [10.0] * 7}), other, resamples=1000)["t"] == pytest.approx(interval)


def test_default_is_ten_thousand_resamples_with_a_fixed_seed():
    diffs = [3.1, -1.7, 4.4, 1.05, -5.3, 9.9, 2.2]
    rng = np.random.default_rng(0)
    means = np.asarray(diffs)[rng.integers(0, 7, size=(10_000, 7))].mean(axis=1)
    expected = np.percentile(means, [2.5, 97.5])
    assert (paired.RESAMPLES, paired.SEED) == (10_000, 0)
    assert paired.mean_interval(diffs) == paired.mean_interval(diffs)  # reproducible
    assert [paired.mean_interval(diffs).low, paired.mean_interval(diffs).high] == pytest.approx(expected, abs=1e-12)
    assert paired.mean_interval(diffs, seed=1) != paired.mean_interval(diffs)


def test_average_is_stratified_by_task():
    """Task a: differences (0, 10); task b: always 4. The average of the task means is
    (5 + 4) / 2 = 4.5 (not the pooled mean 22 / 5 = 4.4); its resamples are (m_a + 4) / 2
    with m_a in {0, 5, 10}, so the interval is [2, 7]."""
    base = _run({"a": [50, 50], "b": [20, 30, 40]})
    other = _run({"a": [50, 60], "b": [24, 34, 44]})
    result = paired.paired_comparison(base, other)
    assert result["a"] == Interval(5.0, 0.0, 10.0)
    assert result["b"] == Interval(4.0, 4.0, 4.0)
    assert result[AVERAGE] == Interval(4.5, 2.0, 7.0)


def test_stratified_average_matches_a_direct_computation():
    per_task = {"b": [1.0, 7.0, 2.0, 2.0], "a": [0.0, 3.0, 8.0]}
    rng = np.random.default_rng(paired.SEED)
    draws = {task: _direct_means(per_task[task], rng, 500) for task in ("a", "b")}  # tasks in sorted order
    averages = [(x + y) / 2 for x, y in zip(draws["a"], draws["b"])]
    interval = paired.stratified_interval(per_task, resamples=500)
    assert interval.mean == pytest.approx((11 / 3 + 3.0) / 2)
    assert (interval.low, interval.high) == pytest.approx((_percentile(averages, 2.5), _percentile(averages, 97.5)))


def test_samples_are_matched_by_id_not_order():
    other = _shifted(BASE, 1.0)
    other["qa"]["qa-0"] += 20  # one sample differs more
    shuffled = {task: dict(random.Random(1).sample(list(scores.items()), len(scores)))
                for task, scores in reversed(list(other.items()))}
    assert list(shuffled["qa"]) != list(other["qa"])
    assert paired.paired_comparison(BASE, shuffled) == paired.paired_comparison(BASE, other)
    assert paired.paired_comparison(BASE, other)["qa"].mean == pytest.approx(5.0)


def test_different_samples_are_refused():
    other = _shifted(BASE, 1.0)
    del other["qa"]["qa-4"]
    other["qa"]["qa-9"] = 1.0
    with pytest.raises(PairingError, match=r"do not hold the same samples on qa: only the baseline has 'qa-4'; "
                                           r"only the other run has 'qa-9'"):
        paired.paired_comparison(BASE, other)
    del other["qa"]
    with pytest.raises(PairingError, match="do not have the same tasks"):
        paired.paired_comparison(BASE, other)


def test_own_score_intervals_per_task_and_average():
    run = _run({"a": [50, 50, 50], "b": [0, 100]})
    result = paired.score_intervals(run)
    assert result["a"] == Interval(50.0, 50.0, 50.0)
    assert result["b"] == Interval(50.0, 0.0, 100.0)
    assert result[AVERAGE] == Interval(50.0, 25.0, 75.0)


# Hand-made prediction files (see tests/test_eval_cli.py), with the ids pred.py writes.
PREDICTIONS = {
    "hotpotqa": [
        {"pred": "The Eiffel Tower.", "answers": ["Eiffel Tower"], "all_classes": None},
        {"pred": "no", "answers": ["yes"], "all_classes": None},
        {"pred": "Marie Curie and Pierre", "answers": ["Marie Curie", "Curie"], "all_classes": None},
    ],
    "trec": [
        {"pred": "\nLocation\nHuman", "answers": ["Location"], "all_classes": ["Location", "Human", "Entity"]},
        {"pred": "Human or Entity", "answers": ["Human"], "all_classes": ["Location", "Human", "Entity"]},
        {"pred": "Entity", "answers": ["Human"], "all_classes": ["Location", "Human", "Entity"]},
    ],
    "passage_count": [{"pred": "3 or 4", "answers": [3], "all_classes": None},
                      {"pred": "There are 7 of 9.", "answers": ["7"], "all_classes": None},
                      {"pred": "5", "answers": ["5"], "all_classes": None}],
    "lcc": [{"pred": "# next line\n    return x + 1", "answers": ["    return x + 2"], "all_classes": None}],
    "gov_report": [{"pred": "the cat sat on the mat", "answers": ["the cat is on the mat"], "all_classes": None},
                   {"pred": "a report", "answers": ["the annual budget report"], "all_classes": None}],
}


def _write(path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


@pytest.mark.parametrize("dataset", sorted(PREDICTIONS))
def test_sample_scores_average_to_the_eval_score(tmp_path, dataset):
    records = [{**r, "length": 100, "_id": f"{dataset}-{i}", "index": i} for i, r in enumerate(PREDICTIONS[dataset])]
    path = tmp_path / f"{dataset}.jsonl"
    _write(path, reversed(records))  # file order is not sample order
    scores = sample_scores(path)
    assert list(scores) == [r["_id"] for r in reversed(records)]
    _, n, expected = score_file(path, longbench_e=False)
    assert len(scores) == n and round(sum(scores.values()) / n, 2) == expected
    assert all(0 <= v <= 100 for v in scores.values())


def test_sample_scores_known_values(tmp_path):
    path = tmp_path / "trec.jsonl"
    _write(path, [{**r, "index": i} for i, r in enumerate(PREDICTIONS["trec"])])  # no _id: matched by index
    assert sample_scores(path) == {0: 100.0, 1: 50.0, 2: 0.0}


def test_sample_scores_need_an_id_and_refuse_repeats(tmp_path):
    path = tmp_path / "trec.jsonl"
    _write(path, PREDICTIONS["trec"])
    with pytest.raises(EvalError, match=r"trec.jsonl: prediction 1 has neither \"_id\" nor \"index\""):
        sample_scores(path)
    _write(path, [{**r, "_id": "same"} for r in PREDICTIONS["trec"]])
    with pytest.raises(EvalError, match="sample 'same' is predicted twice"):
        sample_scores(path)


def test_paired_files_in_different_orders(tmp_path):
    """Two runs of the same prompts written in different orders pair up by _id."""
    records = [{**r, "length": 1, "_id": f"h-{i}", "index": i} for i, r in enumerate(PREDICTIONS["hotpotqa"])]
    (tmp_path / "base").mkdir()
    (tmp_path / "other").mkdir()
    _write(tmp_path / "base" / "hotpotqa.jsonl", records)
    better = [{**r, "pred": r["answers"][0]} for r in records]  # every answer exact: 100 each
    _write(tmp_path / "other" / "hotpotqa.jsonl", better[::-1])
    base = {"hotpotqa": sample_scores(tmp_path / "base" / "hotpotqa.jsonl")}
    other = {"hotpotqa": sample_scores(tmp_path / "other" / "hotpotqa.jsonl")}
    result = paired.paired_comparison(base, other)
    gains = sorted(100 - v for v in base["hotpotqa"].values())
    assert result["hotpotqa"].mean == pytest.approx(sum(gains) / 3)
    assert result["hotpotqa"].low >= gains[0] and result["hotpotqa"].high <= gains[-1]
