"""vatp.analysis.report on small hand-written result.json folders: exact table, averages, bold, gaps, errors."""
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from conftest import HANG_S
from vatp.analysis import report

REPO = Path(__file__).resolve().parents[1]

RESULTS = {
    "full": {"narrativeqa": 20.1, "qasper": 30.0, "trec": 60.5},
    "h2o": {"narrativeqa": 18.25, "qasper": 31.0},  # no trec
    # LongBench-E: narrativeqa -> mean(10, 21) = 15.5; qasper has no bucket; trec -> 180.5 / 3 = 60.17
    "vatp_e": {"narrativeqa": {"0-4k": 10.0, "4-8k": None, "8k+": 21.0},
               "qasper": {"0-4k": None, "4-8k": None, "8k+": None},
               "trec": {"0-4k": 60.5, "4-8k": 70.0, "8k+": 50}},
}

TABLE = """\
| Method | narrativeqa | qasper | trec | Average |
| --- | ---: | ---: | ---: | ---: |
| Full cache | **20.10** | 30.00 | **60.50** | **36.87** |
| H2O | 18.25 | **31.00** |  | 24.62† |
| H2O+VATP | 15.50 |  | 60.17 | 37.84† |

† H2O: average over 2 of 3 datasets; no score for trec.

† H2O+VATP: average over 2 of 3 datasets; no score for qasper."""


@pytest.fixture
def runs(tmp_path):
    """LABEL=FOLDER specs of the three made-up runs, each folder SAVE/MODEL with a result.json."""
    specs = []
    for label, key in (("Full cache", "full"), ("H2O", "h2o"), ("H2O+VATP", "vatp_e")):
        folder = tmp_path / key / "tiny-model"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(RESULTS[key]), encoding="utf-8")
        specs.append(f"{label}={folder}")
    return specs


def _args(specs, out):
    return [arg for spec in specs for arg in ("--run", spec)] + ["--out", str(out)]


def test_cli_prints_and_writes_the_table(runs, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "vatp.analysis.report", *_args(runs, out)], cwd=REPO,
                          capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(TABLE + "\n")
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert TABLE in markdown and "![scores by method](report.png)" in markdown
    assert "LongBench-E results (H2O+VATP): each cell is the unweighted mean of the non-empty length buckets" \
        in markdown
    height, width = matplotlib.image.imread(out / "report.png").shape[:2]
    assert width >= 500 and height >= 300


def test_averages_bold_and_gaps(runs):
    loaded = [report.load_run(*report.parse_run(spec)) for spec in runs]
    assert [run.average() for run in loaded] == [36.87, 24.62, 37.84]
    assert loaded[2].scores == {"narrativeqa": 15.5, "qasper": None, "trec": 60.17} and loaded[2].bucketed
    assert not loaded[0].bucketed
    assert report.markdown_table(loaded) + "\n\n" + "\n\n".join(report.footnotes(loaded)) == TABLE
    # With every dataset present there are no footnotes and the best Average is bold.
    complete = [report.Run("A", {"x": 1.0, "y": 3.0}), report.Run("B", {"x": 2.0, "y": 2.0})]
    assert report.markdown_table(complete).splitlines()[2:] == ["| A | 1.00 | **3.00** | **2.00** |",
                                                                "| B | **2.00** | 2.00 | **2.00** |"]
    assert report.footnotes(complete) == []
    assert "LongBench-E" not in report.caption(complete)


def test_missing_result_file_is_an_error(runs, tmp_path, capsys):
    folder = tmp_path / "never-evaluated" / "tiny-model"
    folder.mkdir(parents=True)
    assert report.main(_args(runs + [f"Scissorhands={folder}"], tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'result.json'} not found: run eval.py first" in err
    assert f"python eval.py --model tiny-model --save {folder.parent}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "holds list, not a dataset -> score object"),
    ("{\"qasper\": \"high\"}", "'qasper' has 'high'; expected a finite score or null"),
    ("{\"qasper\": Infinity}", "'qasper' has inf; expected a finite score"),
    ("{\"qasper\": {\"0-2k\": 1.0}}", "'qasper' has {'0-2k': 1.0}"),
    ("{not json", "cannot read"),
])
def test_malformed_result_file_is_an_error(tmp_path, capsys, content, message):
    (tmp_path / "result.json").write_text(content, encoding="utf-8")
    assert report.main(["--run", f"bad={tmp_path}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "result.json") in err and message in err


@pytest.mark.parametrize("spec", ["no-equals-sign", "=folder", "label="])
def test_bad_run_spec_is_an_error(tmp_path, capsys, spec):
    assert report.main(["--run", spec, "--out", str(tmp_path)]) == 2
    assert "must be LABEL=FOLDER" in capsys.readouterr().err


def test_duplicate_labels_are_an_error(runs, tmp_path, capsys):
    assert report.main(_args([runs[0], runs[0]], tmp_path / "out")) == 2
    assert "labels must differ" in capsys.readouterr().err


def _predictions(folder: Path, preds: list[str]) -> str:
    """FOLDER with a qasper prediction file (sample q-i answered preds[i], answer "blue") and its result.json."""
    from vatp.longbench.evaluate import evaluate, write_results

    folder.mkdir(parents=True)
    lines = [{"pred": p, "answers": ["blue"], "all_classes": None, "length": 1, "_id": f"q-{i}", "index": i}
             for i, p in enumerate(preds)]
    (folder / "qasper.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    write_results(folder, evaluate(folder, longbench_e=False))
    return str(folder)


def test_pair_adds_the_paired_interval(tmp_path, capsys):
    base = _predictions(tmp_path / "h2o", ["blue", "red", "red", "blue"])
    same = _predictions(tmp_path / "vatp", ["blue", "red", "red", "blue"])
    better = _predictions(tmp_path / "better", ["blue"] * 4)
    args = ["--run", f"H2O={base}", "--run", f"H2O+VATP={same}", "--run", f"Other={better}",
            "--pair", "H2O+VATP=H2O", "--pair", "Other = H2O", "--out", str(tmp_path / "out")]
    assert report.main(args) == 0
    printed = capsys.readouterr().out
    assert "| Comparison | qasper | Average |" in printed
    assert "| H2O+VATP vs H2O | +0.00 [+0.00, +0.00] tie | +0.00 [+0.00, +0.00] tie |" in printed
    # differences (0, 100, 100, 0): a resample of 4 holds no 100 with probability 1/16 > 2.5%, only 100s likewise
    row = next(line for line in printed.splitlines() if line.startswith("| Other vs H2O |"))
    assert row.startswith("| Other vs H2O | +50.00 [+0.00, +100.00] tie |")
    assert "10,000 resamples, seed 0" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


def test_pair_errors(tmp_path, capsys):
    base = _predictions(tmp_path / "a", ["blue", "red"])
    fewer = _predictions(tmp_path / "b", ["blue"])
    out = str(tmp_path / "out")
    assert report.main(["--run", f"A={base}", "--run", f"B={fewer}", "--pair", "B=C", "--out", out]) == 2
    assert "--pair 'B=C' names 'C', not a --run label" in capsys.readouterr().err
    assert report.main(["--run", f"A={base}", "--run", f"B={fewer}", "--pair", "B", "--out", out]) == 2
    assert "must be LABEL=BASELINE" in capsys.readouterr().err
    assert report.main(["--run", f"A={base}", "--run", f"B={fewer}", "--pair", "B=A", "--out", out]) == 2
    assert "do not hold the same samples on qasper: only the baseline has 'q-1'" in capsys.readouterr().err


# --- issue 28 --------------------------------------------------------------------------------------

def test_nan_in_a_result_is_no_score(tmp_path, capsys):
    """LongBench's own eval.py writes NaN for an empty length bucket; read as a number, it compared false with
    every score, so nothing was bold and "nan" was printed. It is read as null: no score, said in a footnote."""
    for key, text in {"a": '{"qasper": NaN, "trec": 50.0}', "b": '{"qasper": 30.0, "trec": 60.0}',
                      "c": '{"qasper": {"0-4k": 20.0, "4-8k": NaN, "8k+": 40.0}, "trec": {"0-4k": NaN}}'}.items():
        (tmp_path / key).mkdir()
        (tmp_path / key / "result.json").write_text(text)
    args = [arg for key in "abc" for arg in ("--run", f"{key.upper()}={tmp_path / key}")]
    assert report.main([*args, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed.split("\nwrote ")[0].lower()
    assert printed.startswith("| Method | qasper | trec | Average |\n| --- | ---: | ---: | ---: |\n"
                              "| A |  | 50.00 | 50.00† |\n| B | **30.00** | **60.00** | **45.00** |\n"
                              "| C | **30.00** |  | 30.00† |\n\n† A: average over 1 of 2 datasets; no score for qasper.\n\n"
                              "† C: average over 1 of 2 datasets; no score for trec.")


def test_pair_on_an_id_that_is_a_list_is_one_line(tmp_path, capsys):
    base = _predictions(tmp_path / "a", ["blue", "red"])
    other = _predictions(tmp_path / "b", ["blue", "blue"])
    path = Path(other) / "qasper.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "_id": ["q", 0]})
    path.write_text("\n".join(lines) + "\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert report.main(["--run", f"A={base}", "--run", f"B={other}", "--pair", "B=A",
                        "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"report: error: {path}, line 1: \"_id\" must be a string (the sample's id), got [\"q\", 0]"), err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out").exists()
