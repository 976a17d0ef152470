"""The study scripts: verdict count, averages chart (made-up scores), a report-only study of made-up runs,
kept-set diagnostic."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO
from vatp.analysis.paired import AVERAGE, Interval
from vatp.longbench.evaluate import evaluate, write_results


# Five made-up tasks, one per LongBench metric family the suite uses; the study takes the suite's task list.
TASKS = ["offline_qa", "offline_retrieval", "offline_count", "offline_code", "offline_classify"]


def _study():
    spec = importlib.util.spec_from_file_location("study", REPO / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.TASKS = TASKS
    return module


def _scores(study, h2o, h2o_vatp):
    """Two lengths x one budget; every task scores the same except offline_qa; and each run's average interval."""
    scores, intervals = {}, {}
    for n in (1000, 1500):
        for name, qa in (("h2o", h2o[n]), ("h2o_vatp", h2o_vatp[n]), ("scissorhands", 10.0),
                         ("scissorhands_vatp", 10.0), ("streaming", 5.0), ("snapkv", 12.0), ("snapkv_vatp", 11.0),
                         ("full", 30.0)):
            tasks = {t: 20.0 for t in study.TASKS} | {"offline_qa": qa}
            key = (n, 1.0 if name == "full" else 0.5, name)
            scores[key] = tasks | {AVERAGE: sum(tasks.values()) / 5}
            intervals[key] = Interval(scores[key][AVERAGE], scores[key][AVERAGE] - 2, scores[key][AVERAGE] + 3)
    return scores, intervals


TIE, WIN, LOSS = Interval(1.0, -1.0, 3.0), Interval(4.0, 1.0, 7.0), Interval(-4.0, -7.0, -1.0)


def test_verdict_counts_use_the_paired_interval():
    study = _study()
    tasks = {t: TIE for t in study.TASKS}
    comparisons = {
        (1000, 0.5, "h2o", "h2o_vatp"): tasks | {"offline_qa": WIN, AVERAGE: WIN},
        (1500, 0.5, "h2o", "h2o_vatp"): tasks | {"offline_qa": LOSS, "offline_code": WIN, AVERAGE: TIE},
        (1000, 0.5, "scissorhands", "scissorhands_vatp"): tasks | {AVERAGE: TIE},
    }
    lines = study.verdict_counts(comparisons, [1000, 1500], [0.5])
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line.split("|")[3:6] for line in lines[2:]}
    count = lambda pair, task: [int(c) for c in rows[(pair, task)]]
    assert count("H2O+VATP vs H2O", "offline_qa") == [1, 0, 1]  # a win at 1000 tokens, a loss at 1500
    assert count("H2O+VATP vs H2O", "offline_code") == [1, 1, 0]
    assert count("H2O+VATP vs H2O", "offline_count") == [0, 2, 0]
    assert count("H2O+VATP vs H2O", "Average") == [1, 1, 0]
    assert count("H2O+VATP vs H2O", "**all tasks**") == [2, 7, 1]  # 5 tasks x 2 lengths, Average apart
    assert count("Scissorhands+VATP vs Scissorhands", "**all tasks**") == [0, 5, 0]
    assert not any(pair == "SnapKV+VATP vs SnapKV" for pair, _ in rows)  # never compared


def test_averages_chart_is_written(tmp_path):
    study = _study()
    path = tmp_path / "averages.png"
    scores, intervals = _scores(study, {1000: 10.0, 1500: 12.0}, {1000: 15.0, 1500: 12.0})
    study.averages_chart(scores, intervals, [1000, 1500], [0.5], path)
    assert path.stat().st_size > 10_000


ANSWERS = {  # task -> (answer, all_classes): predicting the answer scores 100, predicting "" scores 0
    "offline_qa": ("the blue lake", None), "offline_retrieval": ("Paragraph 3", None), "offline_count": ("4", None),
    "offline_code": ("return x + 1", None), "offline_classify": ("Location", ["Location", "Human"]),
}


def _finished_run(folder, right, reverse=False, scored=True) -> None:
    """A finished grid point: 6 samples per task (in reverse order if ``reverse``), ``right(i)`` says whether
    sample i is answered; its run records (evict backend); then, if ``scored``, its result.json."""
    folder.mkdir(parents=True)
    for task, (answer, classes) in ANSWERS.items():
        lines = [{"pred": answer if right(i) else "", "answers": [answer], "all_classes": classes, "length": 100,
                  "_id": f"{task}-{i}", "index": i} for i in range(6)]
        text = "".join(json.dumps(line) + "\n" for line in (lines[::-1] if reverse else lines))
        (folder / f"{task}.jsonl").write_text(text)
        record = {"dataset": task, "settings": {"backend": "evict", "dtype": "float16"}, "sessions": [{"versions": {}}]}
        (folder / f"run_{task}.json").write_text(json.dumps(record))
    if scored:
        write_results(folder, evaluate(folder, longbench_e=False))


def test_report_only_study_pairs_the_finished_runs(tmp_path):
    study = _study()
    model = "tiny-model"
    _finished_run(tmp_path / "t1000" / "full" / model, lambda i: True)
    _finished_run(tmp_path / "t1000" / "h2o_b0.5" / model, lambda i: i % 2 == 0)  # half right
    _finished_run(tmp_path / "t1000" / "h2o_vatp_b0.5" / model, lambda i: True, reverse=True)  # paired by _id
    _finished_run(tmp_path / "t1000" / "snapkv_b0.5" / model, lambda i: True)
    _finished_run(tmp_path / "t1000" / "snapkv_vatp_b0.5" / model, lambda i: True)
    assert study.main(["--out", str(tmp_path), "--model", model, "--tokens", "1000", "--budgets", "0.5",
                       "--report_only"]) == 0
    text = (tmp_path / "study.md").read_text()
    head = "# Study: tiny-model, 4 samples per task and length, sink_len 20, backend evict, dtype float16\n"
    assert text.startswith(head)  # as the runs recorded, not this call's default --backend mask
    row = next(line for line in text.splitlines() if line.startswith("| H2O+VATP vs H2O | +50.00 ["))
    assert row.endswith(" win |") and row.count(" win") == 6  # 5 tasks and the average
    assert "| SnapKV+VATP vs SnapKV | +0.00 [+0.00, +0.00] tie |" in text
    assert "| H2O+VATP vs H2O | **all tasks** | 5 | 0 | 0 |" in text
    assert "| SnapKV+VATP vs SnapKV | Average | 0 | 1 | 0 |" in text
    assert "Not run: CriticalKV at ~1000 tokens, 50% budget; Scissorhands at ~1000 tokens, 50% budget; " \
           "Scissorhands+VATP" in text
    assert "Scissorhands+VATP vs Scissorhands" not in text.split("### Value-aware variant against")[0]
    assert (tmp_path / "averages.png").is_file() and (tmp_path / "report_t1000_b0.5" / "report.png").is_file()
    assert "H2O+VATP vs H2O" in (tmp_path / "report_t1000_b0.5" / "report.md").read_text()
    saved = json.loads((tmp_path / "intervals.json").read_text())
    assert saved["averages"]["1000|1.0|full"] == {"mean": 100.0, "low": 100.0, "high": 100.0}
    h2o = saved["paired"]["1000|0.5|h2o|h2o_vatp"]
    assert h2o["Average"]["mean"] == 50.0 and 0 < h2o["Average"]["low"] < 50 < h2o["Average"]["high"] < 100
    assert h2o["Average"]["verdict"] == "win"


def test_value_terms_pairs_each_variant_with_the_papers_vatp_and_with_no_value_term(tmp_path):
    """The variants' page from finished made-up runs: averages, paired differences both ways, verdicts, chart;
    the per-budget report keeps the main grid."""
    study, model = _study(), "tiny-model"
    for name, right in {"full": lambda i: True, "snapkv": lambda i: i % 2 == 0, "snapkv_vatp": lambda i: i < 3,
                        "snapkv_vatp_l2": lambda i: True, "h2o": lambda i: False, "h2o_vatp": lambda i: False}.items():
        _finished_run(tmp_path / "t1000" / ("full" if name == "full" else f"{name}_b0.5") / model, right)
    assert study.main(["--out", str(tmp_path), "--model", model, "--tokens", "1000", "--budgets", "0.5",
                       "--report_only", "--value_terms"]) == 0
    page = (tmp_path / "value_terms.md").read_text()
    assert "| none (the method alone) | 50.00 | 0.00 |" in page
    assert "| ‖v‖₂ | 100.00 |  |" in page
    vatp_rows = page.split("### Against the paper's VATP")[1].split("### Against no value term")[0]
    assert "| none (the method alone) | +0.00 [" in vatp_rows  # 3 of 6 right each, other samples
    assert "| ‖v‖₂ | +50.00 [" in vatp_rows and " win |" in vatp_rows
    none_rows = page.split("### Against no value term")[1].split("### Wins")[0]
    assert "| ‖v‖₂ | +50.00 [" in none_rows and "| ‖v‖₁: the paper's VATP (sinks 20) | +0.00 [" in none_rows
    assert "| SnapKV+VATP[l2] | VATP | 5 | 0 | 0 |" in page and "| SnapKV+VATP[l2] | no value term | 5 | 0 | 0 |" in page
    assert "#### SnapKV, ~1000 tokens, 50% budget" in page and "SnapKV+VATP[l2] − SnapKV+VATP |" in page
    assert (tmp_path / "value_terms.png").stat().st_size > 10_000
    assert "[l2]" not in (tmp_path / "report_t1000_b0.5" / "report.md").read_text()
    assert "SnapKV+VATP[l2] vs SnapKV+VATP" in (tmp_path / "study.md").read_text()  # in the verdict counts


def test_methods_runs_and_reports_only_those(tmp_path):
    study, model = _study(), "tiny-model"
    _finished_run(tmp_path / "t1000" / "full" / model, lambda i: True)
    _finished_run(tmp_path / "t1000" / "h2o_b0.5" / model, lambda i: i % 2 == 0)
    _finished_run(tmp_path / "t1000" / "h2o_vatp_b0.5" / model, lambda i: True)
    assert study.main(["--out", str(tmp_path), "--model", model, "--tokens", "1000", "--budgets", "0.5",
                       "--methods", "h2o_vatp", "h2o", "--report_only"]) == 0
    text = (tmp_path / "study.md").read_text()
    assert "| H2O+VATP vs H2O | +50.00 [" in text and "Not run" not in text and "| SnapKV |" not in text


def test_report_only_scores_complete_predictions_and_skips_partial_ones(tmp_path):
    """Predictions made elsewhere (``--predict_only`` on the GPU machine) come back unscored: a report-only
    run scores the complete points with eval.py and lists a point with a missing prediction as not run."""
    study, model = _study(), "tiny-model"
    (tmp_path / "data_1000").mkdir()
    for task in ANSWERS:
        (tmp_path / "data_1000" / f"{task}.jsonl").write_text("{}\n" * 6)
    _finished_run(tmp_path / "t1000" / "full" / model, lambda i: True, scored=False)
    _finished_run(tmp_path / "t1000" / "h2o_b0.5" / model, lambda i: i < 3, scored=False)
    partial = tmp_path / "t1000" / "h2o_vatp_b0.5" / model
    _finished_run(partial, lambda i: True, scored=False)
    code = partial / "offline_code.jsonl"
    code.write_text("".join(code.read_text().splitlines(keepends=True)[:5]))  # 5 of the 6 samples
    assert study.main(["--out", str(tmp_path), "--model", model, "--tokens", "1000", "--budgets", "0.5",
                       "--report_only"]) == 0
    text = (tmp_path / "study.md").read_text()
    assert "| Full cache | **100.00** | **100.00** | **100.00** | **100.00** | **100.00** | **100.00** |" in text
    assert "| H2O | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 |" in text
    assert "H2O+VATP at ~1000 tokens, 50% budget;" in text.split("Not run: ")[1]
    assert not (partial / "result.json").exists()


def test_predict_only_and_report_only_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        _study().main(["--predict_only", "--report_only"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def _kept_sets():
    spec = importlib.util.spec_from_file_location("kept_sets", REPO / "scripts" / "kept_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobs_generate_every_unfinished_point_in_parallel(tmp_path, monkeypatch):
    """--jobs: each point's pred.py is launched once, at most ``jobs`` at a time, a finished point is skipped,
    and a failed one is reported while the others go on."""
    import threading
    import time

    study, model = _study(), "tiny-model"
    args = study.argparse.Namespace(tokens=[300], samples=1, budgets=[0.2, 0.5], sink_len=20, model=model,
                                    backend="evict", batch_size=1, device=None, dtype=None, jobs=3, methods=list(study.METHODS))
    data = tmp_path / "data_300"
    monkeypatch.setattr(study, "run", lambda cmd: [data.mkdir(exist_ok=True)] + [
        (data / f"{t}.jsonl").write_text("{}\n") for t in study.TASKS])
    done = tmp_path / "t300" / "full" / model
    done.mkdir(parents=True)
    for task in study.TASKS:
        (done / f"{task}.jsonl").write_text("{}\n")
    running, peak, launched = [0], [0], []
    lock = threading.Lock()

    def fake_run(cmd, cwd, stdout, stderr):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            launched.append(cmd[cmd.index("--save") + 1])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return study.subprocess.CompletedProcess(cmd, 1 if "streaming_b0.2" in cmd[cmd.index("--save") + 1] else 0)

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    study.generate_in_parallel(args, tmp_path)
    expected = {str(tmp_path / "t300" / f"{name}_b{b}") for b in (0.2, 0.5) for name in study.METHODS}
    assert sorted(launched) == sorted(expected)  # 14 points, the finished full cache not among them
    assert peak[0] == 3
    assert all((Path(save) / "pred.log").is_file() for save in expected)


def test_kept_set_comparison_counts_overlap_and_ends():
    import torch

    kept_sets = _kept_sets()
    base = torch.tensor([[[False, True, True, False, True, True]]])  # (layers, kv_heads, L)
    vatp = torch.tensor([[[True, True, False, False, True, True]]])
    figures = kept_sets.compare(base, vatp, first=2, last=2)
    assert figures["jaccard"] == pytest.approx(3 / 5)
    assert (figures["first_base"], figures["first_vatp"]) == (0.5, 1.0)
    assert (figures["last_base"], figures["last_vatp"]) == (1.0, 1.0)


def test_vatp_keeps_its_sinks_after_the_prompt():
    import torch

    from conftest import tiny_llama

    kept_sets = _kept_sets()
    ids = torch.randint(0, 128, (1, 80), generator=torch.Generator().manual_seed(0))
    keep = kept_sets.kept_after_prompt(tiny_llama(), ids, 0.25, h2o=True, apval=True, sink_len=4)
    assert keep.shape == (2, 4, 80)
    assert keep[..., :4].all()  # the sinks
    assert (keep.sum(-1) == 40).all()  # heavy 20 + recent 20 of the 80 prompt tokens


# --- issue 28: flags checked first, one line for a problem, a failed step or Ctrl-C ----------------

@pytest.mark.parametrize("flags, message", [
    (["--tokens", "100"], "--tokens must be >= 200 (the offline suite's smallest context), got 100"),
    (["--tokens", "1000", "1000"], "--tokens repeats 1000; give each value once"),
    (["--budgets", "0.2", "0.5", "0.2"], "--budgets repeats 0.2; give each value once"),
    (["--methods", "h2o", "h2o"], "--methods repeats h2o; give each value once"),
    (["--budgets", "0"], "--budgets must be shares of the prompt in (0, 1], got [0.0]"),
    (["--budgets", "1.5"], "--budgets must be shares of the prompt in (0, 1], got [1.5]"),
    (["--samples", "0"], "--samples must be >= 1, got 0"),
    (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--sink_len", "-1"], "--sink_len must be >= 0, got -1"),
    (["--report_only"], "--out {out} is not a folder, so there is nothing to report; give the --out of a study, "
                        "or run without --report_only first"),
])
def test_a_flag_the_grid_cannot_use_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, flags, message):
    """--tokens 100 failed in the suite's builder, and --report_only on a missing --out inside, as tracebacks."""
    study, out = _study(), tmp_path / "out"
    monkeypatch.setattr(study, "run", lambda cmd: pytest.fail(f"ran {cmd}"))
    assert study.main(["--out", str(out), *flags]) == 2
    assert capsys.readouterr().err.splitlines() == [f"study.py: error: {message.format(out=out)}"]
    assert not any(tmp_path.iterdir())


def test_a_failed_step_is_one_line_with_its_exit_status(tmp_path, capsys, monkeypatch):
    study = _study()

    def fail(cmd):
        raise study.subprocess.CalledProcessError(2, cmd)

    monkeypatch.setattr(study, "run", fail)
    assert study.main(["--out", str(tmp_path), "--tokens", "300"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"study.py: error: {sys.executable} -m vatp.longbench.suite --out {tmp_path.resolve()}")
    assert line.endswith(" exited with status 2 (its message is above); fix that, then rerun the same command: "
                         "finished points are reused")


def test_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch):
    study = _study()

    def interrupt(cmd):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run", interrupt)
    assert study.main(["--out", str(tmp_path), "--tokens", "300"]) == 130
    assert capsys.readouterr().err.splitlines() == [
        "study.py: interrupted; rerun the same command to resume (finished points are reused)"]


def test_a_broken_result_file_is_one_line(tmp_path, capsys):
    study, model = _study(), "tiny-model"
    _finished_run(tmp_path / "t1000" / "full" / model, lambda i: True)
    (tmp_path / "t1000" / "full" / model / "result.json").write_text('{"offline_qa": "high"}')
    (tmp_path / "data_1000").mkdir()
    assert study.main(["--out", str(tmp_path), "--model", model, "--tokens", "1000", "--budgets", "0.5",
                       "--report_only"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"study.py: error: {tmp_path / 't1000' / 'full' / model / 'result.json'}: 'offline_qa' "
                           "has 'high'; expected a finite score")
