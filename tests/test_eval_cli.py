"""eval.py end to end, through a subprocess, on small hand-written prediction folders.

The expected result.json values were obtained by running LongBench v1's own
`LongBench/eval.py` (commit 2e00731, with and without --e) on the same files;
where it writes NaN for an empty bucket, we expect null.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_S
from pred_data import snapshot

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-model"

PREDICTIONS = {
    "hotpotqa": [
        {"pred": "The Eiffel Tower.", "answers": ["Eiffel Tower"], "all_classes": None, "length": 1200},
        {"pred": "no", "answers": ["yes"], "all_classes": None, "length": 5100},
        {"pred": "Marie Curie and Pierre", "answers": ["Marie Curie", "Curie"], "all_classes": None, "length": 3999},
    ],
    "trec": [
        {"pred": "\nLocation\nHuman", "answers": ["Location"], "all_classes": ["Location", "Human", "Entity"], "length": 900},
        {"pred": "Human or Entity", "answers": ["Human"], "all_classes": ["Location", "Human", "Entity"], "length": 4500},
    ],
    "passage_retrieval_zh": [
        {"pred": "段落3", "answers": ["段落3"], "all_classes": None, "length": 2000},
        {"pred": "段落3和段落5", "answers": ["段落5"], "all_classes": None, "length": 3000},
    ],
    "lcc": [
        {"pred": "# next line\n    return x + 1", "answers": ["    return x + 2"], "all_classes": None, "length": 8000},
    ],
}
LONGBENCH_RESULT = {"hotpotqa": 55.56, "lcc": 94.0, "passage_retrieval_zh": 75.0, "trec": 75.0}
LONGBENCH_RESULT_E = {
    "hotpotqa": {"0-4k": 83.33, "4-8k": 0.0, "8k+": None},
    "lcc": {"0-4k": None, "4-8k": None, "8k+": 94.0},
    "passage_retrieval_zh": {"0-4k": 75.0, "4-8k": None, "8k+": None},
    "trec": {"0-4k": 100.0, "4-8k": 50.0, "8k+": None},
}


def run_eval(*args):
    return subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=HANG_S)


@pytest.fixture
def save(tmp_path):
    """A --save folder with one model's predictions plus sidecar files that must be ignored."""
    model_dir = tmp_path / MODEL
    model_dir.mkdir()
    for dataset, records in PREDICTIONS.items():
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        (model_dir / f"{dataset}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (model_dir / "run.json").write_text('{"heavy_ratio": 0.1}')
    (model_dir / "notes.txt").write_text("not a prediction file")
    return tmp_path


def test_plain_mode_matches_longbench(save):
    proc = run_eval("--model", MODEL, "--save", save)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((save / MODEL / "result.json").read_text()) == LONGBENCH_RESULT
    table = proc.stdout.splitlines()
    assert table[0].split() == ["dataset", "n", "score"]
    assert "hotpotqa 3 55.56" in [" ".join(line.split()) for line in table]
    assert " ".join(next(line for line in table if line.startswith("average")).split()) == "average 8 74.89"


def test_e_mode_buckets_and_null_empty_bucket(save):
    proc = run_eval("--model", MODEL, "--save", save, "--e")
    assert proc.returncode == 0, proc.stderr
    text = (save / MODEL / "result.json").read_text()
    assert "NaN" not in text
    assert json.loads(text) == LONGBENCH_RESULT_E
    assert proc.stdout.splitlines()[0].split() == ["dataset", "n", "0-4k", "4-8k", "8k+"]
    assert "lcc 1 - - 94.00" in [" ".join(line.split()) for line in proc.stdout.splitlines()]


def _assert_failed_cleanly(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_malformed_line_is_reported_and_nothing_written(save):
    path = save / MODEL / "trec.jsonl"
    path.write_text(path.read_text() + '{"pred": "Human", "answers": ["Human"\n', encoding="utf-8")
    proc = run_eval("--model", MODEL, "--save", save)
    _assert_failed_cleanly(proc, str(path), "line 3", "not valid JSON", "fix or delete this line")
    assert sorted(p.name for p in (save / MODEL).iterdir()) == [
        "hotpotqa.jsonl", "lcc.jsonl", "notes.txt", "passage_retrieval_zh.jsonl", "run.json", "trec.jsonl"]


def test_a_sample_predicted_twice_is_refused_and_nothing_written(save):
    """It would count twice in the score; files without ids (LongBench's own) are scored as they are."""
    path = save / MODEL / "trec.jsonl"
    lines = [json.dumps({**r, "_id": f"t{i}"}) for i, r in enumerate(PREDICTIONS["trec"])]
    path.write_text("\n".join(lines + lines[:1]) + "\n", encoding="utf-8")
    proc = run_eval("--model", MODEL, "--save", save)
    _assert_failed_cleanly(proc, str(path), "sample 't0' is predicted twice")
    assert not (save / MODEL / "result.json").exists()


def _record(save, dataset, limit=None, e=False):
    """A run record as pred.py leaves it beside the predictions."""
    session = {"args": {"limit": limit}, "versions": {}, "count": len(PREDICTIONS[dataset])}
    record = {"dataset": dataset, "settings": {"e": e, "backend": "mask"}, "sessions": [session]}
    (save / MODEL / f"run_{dataset}.json").write_text(json.dumps(record))


def test_runs_cut_by_limit_or_made_on_other_data_are_flagged(save):
    """The scores are written as LongBench's, and the run records say what the scores cannot."""
    _record(save, "trec", limit=2)
    _record(save, "hotpotqa")
    _record(save, "lcc", e=True)
    proc = run_eval("--model", MODEL, "--save", save)
    assert proc.returncode == 0
    assert json.loads((save / MODEL / "result.json").read_text()) == LONGBENCH_RESULT
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("eval.py: warning:")]
    assert warnings == ["eval.py: warning: lcc: predicted on LongBench-E data; score it with --e",
                        "eval.py: warning: trec: predicted with --limit 2, so its 2 samples are a subset of the "
                        "dataset and its score is not a LongBench score; rerun pred.py without --limit to finish"]
    proc = run_eval("--model", MODEL, "--save", save, "--e")
    assert "hotpotqa: predicted on LongBench data; score it without --e" in proc.stderr
    assert "lcc:" not in proc.stderr


def test_failed_run_leaves_previous_result_untouched(save):
    assert run_eval("--model", MODEL, "--save", save).returncode == 0
    before = (save / MODEL / "result.json").read_text()
    (save / MODEL / "hotpotqa.jsonl").write_text('{"pred": "x", "answers": ["x"]}\n')
    proc = run_eval("--model", MODEL, "--save", save)
    _assert_failed_cleanly(proc, "hotpotqa.jsonl, line 1", "missing field(s) all_classes")
    assert (save / MODEL / "result.json").read_text() == before


def test_length_is_required_only_with_e(save):
    (save / MODEL / "lcc.jsonl").write_text('{"pred": "a", "answers": ["a"], "all_classes": null}\n')
    assert run_eval("--model", MODEL, "--save", save).returncode == 0
    _assert_failed_cleanly(run_eval("--model", MODEL, "--save", save, "--e"), "lcc.jsonl, line 1", "length")


def test_wrong_field_type_is_reported(save):
    (save / MODEL / "lcc.jsonl").write_text('{"pred": "a", "answers": "a", "all_classes": null, "length": 1}\n')
    _assert_failed_cleanly(run_eval("--model", MODEL, "--save", save), "lcc.jsonl, line 1", '"answers" must be a list')


def test_unknown_dataset_file_is_reported(save):
    (save / MODEL / "my_task.jsonl").write_text('{"pred": "a", "answers": ["a"], "all_classes": null, "length": 1}\n')
    _assert_failed_cleanly(run_eval("--model", MODEL, "--save", save), "unknown dataset 'my_task'", "DATASET2METRIC")


def test_missing_folder_and_no_prediction_files(tmp_path):
    _assert_failed_cleanly(run_eval("--model", "nope", "--save", tmp_path), "does not exist")
    (tmp_path / MODEL).mkdir()
    (tmp_path / MODEL / "run.json").write_text("{}")
    _assert_failed_cleanly(run_eval("--model", MODEL, "--save", tmp_path), "no .jsonl prediction files")
    assert not (tmp_path / MODEL / "result.json").exists()


def test_empty_prediction_file_is_reported(save):
    (save / MODEL / "lcc.jsonl").write_text("\n")
    _assert_failed_cleanly(run_eval("--model", MODEL, "--save", save), "lcc.jsonl has no predictions")


def test_help_describes_every_flag():
    proc = run_eval("--help")
    assert proc.returncode == 0
    for flag in ("--model", "--save", "--e"):
        assert flag in proc.stdout
    assert "result.json" in proc.stdout and "0-4k" in proc.stdout


def test_unmerged_parts_are_ignored_with_a_warning(save):
    parts = save / MODEL / "hotpotqa.parts"
    parts.mkdir()
    (parts / "part-0-of-2.jsonl").write_text('{"pred": "a", "answers": ["a"], "all_classes": null, "length": 1}\n')
    proc = run_eval("--model", MODEL, "--save", save)
    assert proc.returncode == 0, proc.stderr
    assert "warning: hotpotqa has unmerged part files" in proc.stderr
    assert json.loads((save / MODEL / "result.json").read_text()) == LONGBENCH_RESULT


def _one_error_line(proc) -> str:
    """The single `eval.py: error:` line of a failed run (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("eval.py: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("length", ["-1", "-0.5", "-Infinity", "Infinity", "NaN", '"long"', "true", "null"])
def test_e_refuses_negative_non_finite_and_non_numeric_lengths(save, length):
    assert run_eval("--model", MODEL, "--save", save, "--e").returncode == 0
    before = (save / MODEL / "result.json").read_bytes()
    path = save / MODEL / "hotpotqa.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"length": 5100', f'"length": {length}')
    path.write_text("\n".join(lines) + "\n")
    error = _one_error_line(run_eval("--model", MODEL, "--save", save, "--e"))
    assert f"{path}, line 2: " in error
    assert f'"length" must be a finite number >= 0 (the context length in words), got {length}' in error
    assert "fix or delete this line, or re-run pred.py" in error
    assert (save / MODEL / "result.json").read_bytes() == before


def test_numeric_answers_are_scored_as_strings(tmp_path):
    """LongBench's count metric compares str(answer): a numeric answer scores as its string."""
    scores = {}
    for kind, answers in {"numbers": [5, 3], "strings": ["5", "3"]}.items():
        model_dir = tmp_path / kind / MODEL
        model_dir.mkdir(parents=True)
        records = [{"pred": "5", "answers": answers[:1], "all_classes": None, "length": 100},
                   {"pred": "3 or 4", "answers": answers[1:], "all_classes": None, "length": 5000}]
        (model_dir / "passage_count.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        for e in ([], ["--e"]):
            proc = run_eval("--model", MODEL, "--save", tmp_path / kind, *e)
            assert proc.returncode == 0, proc.stderr
            scores[kind, bool(e)] = json.loads((model_dir / "result.json").read_text())
    assert scores["numbers", False] == scores["strings", False] == {"passage_count": 75.0}
    assert scores["numbers", True] == scores["strings", True] == {
        "passage_count": {"0-4k": 100.0, "4-8k": 50.0, "8k+": None}}


def test_non_utf8_byte_is_one_line_with_file_and_line(save):
    path = save / MODEL / "trec.jsonl"
    path.write_bytes(path.read_bytes().replace(b"Human or Entity", b"Human or \xff"))
    error = _one_error_line(run_eval("--model", MODEL, "--save", save))
    assert f"{path}, line 2: not UTF-8 (byte 0xff at byte 20)" in error
    assert not (save / MODEL / "result.json").exists()


def _eval_main():
    """eval.py's main, imported in this process (to make its writes fail)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_script", REPO / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _fail(errno_code):
    def fail(*args, **kwargs):
        raise OSError(errno_code, os.strerror(errno_code))
    return fail


@pytest.mark.parametrize("where, errno_code", [("open", errno.EROFS), ("write", errno.ENOSPC),
                                               ("replace", errno.ENOSPC)],
                         ids=["read-only folder", "full disk at the write", "full disk at the rename"])
def test_failed_result_write_is_one_line_and_keeps_the_old_result(save, monkeypatch, capsys, where, errno_code):
    main = _eval_main()
    assert main(["--model", MODEL, "--save", str(save)]) == 0
    before = (save / MODEL / "result.json").read_bytes()
    (save / MODEL / "lcc.jsonl").write_text('{"pred": "x", "answers": ["y"], "all_classes": null}\n')
    capsys.readouterr()
    monkeypatch.setattr(f"vatp.longbench.prediction_files.os.{where}", _fail(errno_code))
    assert main(["--model", MODEL, "--save", str(save)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"eval.py: error: cannot write {save / MODEL / 'result.json'}: "
                                f"{os.strerror(errno_code)}; it is left as it was: check the folder's permissions "
                                "and free space, then run eval.py again."]
    assert (save / MODEL / "result.json").read_bytes() == before
    assert not list((save / MODEL).glob(".result.*"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(save):
    model_dir = save / MODEL
    model_dir.chmod(0o555)
    try:
        error = _one_error_line(run_eval("--model", MODEL, "--save", save))
    finally:
        model_dir.chmod(0o755)
    assert f"cannot write {model_dir / 'result.json'}: Permission denied" in error
    assert not (model_dir / "result.json").exists()


# --- issue 28 --------------------------------------------------------------------------------------

def _eval(save, capsys, *flags) -> tuple[int, list[str]]:
    """eval.py in this process: its exit status and its stderr lines."""
    code = _eval_main()(["--model", MODEL, "--save", str(save), *flags])
    return code, capsys.readouterr().err.splitlines()


def _session_record(save, dataset, limit, samples=None):
    """A run record as pred.py writes it: with the dataset's sample count since issue 28, without it before."""
    session = {"args": {"limit": limit}, "versions": {}, "count": len(PREDICTIONS[dataset])}
    if samples is not None:
        session["samples"] = samples
    record = {"dataset": dataset, "settings": {"e": False}, "sessions": [session]}
    (save / MODEL / f"run_{dataset}.json").write_text(json.dumps(record))


def test_a_limit_that_covered_every_sample_is_no_subset(save, capsys):
    """--limit 1000 on a dataset of 2 predicted all of it: no warning (the issue's case); a limit below the
    dataset's size is one. A record older than the sample count warns only where the limit was reached."""
    _session_record(save, "trec", limit=1000, samples=2)
    _session_record(save, "hotpotqa", limit=3, samples=4)
    _session_record(save, "lcc", limit=1000)
    _session_record(save, "passage_retrieval_zh", limit=2)
    code, lines = _eval(save, capsys)
    assert code == 0
    assert lines == ["eval.py: warning: hotpotqa: predicted with --limit 3, so its 3 samples are a subset of the "
                     "dataset and its score is not a LongBench score; rerun pred.py without --limit to finish",
                     "eval.py: warning: passage_retrieval_zh: predicted with --limit 2, so its 2 samples are a "
                     "subset of the dataset and its score is not a LongBench score; rerun pred.py without --limit "
                     "to finish"]


@pytest.mark.parametrize("field, value, message", [
    ("_id", [1, 2], '"_id" must be a string (the sample\'s id), got [1, 2]'),
    ("_id", None, '"_id" must be a string (the sample\'s id), got null'),
    ("index", "3", '"index" must be an integer (the sample\'s position), got "3"'),
    ("index", [0], '"index" must be an integer (the sample\'s position), got [0]'),
])
def test_an_id_or_index_of_the_wrong_type_is_one_line(save, capsys, field, value, message):
    """An _id that is a list was a TypeError traceback (unhashable) in eval.py and report --pair."""
    path = save / MODEL / "trec.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), field: value})
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(save)
    code, err = _eval(save, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"eval.py: error: {path}, line 2: {message}. Each line must be"), err[0]
    assert snapshot(save) == before


def test_a_run_record_whose_args_is_not_an_object_is_a_warning(save, capsys):
    """The record only adds warnings to the scores: one it cannot read is said in one line (a traceback before)."""
    path = save / MODEL / "run_trec.json"
    path.write_text(json.dumps({"dataset": "trec", "settings": {}, "sessions": [{"args": [1, 2], "versions": {}}]}))
    code, err = _eval(save, capsys)
    assert code == 0
    assert err == [f"eval.py: warning: trec: its run record cannot be read ({path}: the last session's \"args\" is "
                   "not an object; restore it, or pass --overwrite to delete the predictions of trec beside it and "
                   "start fresh), so how it was predicted is unknown"]
    assert json.loads((save / MODEL / "result.json").read_text()) == LONGBENCH_RESULT


def test_result_json_has_the_permissions_of_the_other_outputs(save, capsys):
    """mkstemp made it 0600; now 0666 less the umask, as pred.py's files (0644 under umask 022)."""
    old = os.umask(0o022)
    try:
        assert _eval(save, capsys)[0] == 0
    finally:
        os.umask(old)
    assert (save / MODEL / "result.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in (save / MODEL).iterdir() if p.name.startswith(".")] == []  # no temp file left
