"""Data files are checked line by line (issue 16), and config entries value by value (issue 28), before
the model loads.

Every broken input is refused with ``path:line`` (a config: its file and key) and the fix, by
``load_samples`` / ``resolve_model`` / ``dataset_configs`` directly and by pred.py (exit 2, one
``pred.py: error:`` line, no traceback, before the model load); valid LongBench-shaped data loads
exactly as parsed.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import HANG_S
from pred_data import MODEL, REPO, SAMSUM, SAMSUM_E, load_pred, snapshot, write_jsonl
from vatp.longbench.data import DataError, UsageError, dataset_configs, load_samples, resolve_model

GOOD = {"input": "How many?", "context": "one two three", "answers": ["3"], "length": 3, "all_classes": None}
JSON_FIX = 'write it as a JSON string ("" if there is none)'
ANSWERS_FIX = 'write it as a JSON list such as ["Paris"]'
LENGTH_FIX = "write the context length in words"
CLASSES_FIX = "write null, or the class names as a JSON list"

# id: (line 3 of the file: a JSON value, or raw bytes; what the message must say)
BAD_LINES = {
    "input null": ({**GOOD, "input": None}, ['"input" must be a string, got null', JSON_FIX]),
    "context number": ({**GOOD, "context": 5}, ['"context" must be a string, got 5', JSON_FIX]),
    "context list": ({**GOOD, "context": ["a"]}, ['"context" must be a string, got ["a"]', JSON_FIX]),
    "answers a string": ({**GOOD, "answers": "Jasper"}, ['"answers" must be a list of strings, got "Jasper"',
                                                         ANSWERS_FIX]),
    "answers null": ({**GOOD, "answers": None}, ['"answers" must be a list of strings, got null']),
    "answers with null": ({**GOOD, "answers": ["a", None]}, ['"answers" must be a list of strings, got ["a", null]']),
    "answers with a bool": ({**GOOD, "answers": [True]}, ['"answers" must be a list of strings, got [true]']),
    "answers nested": ({**GOOD, "answers": [["a"]]}, ['"answers" must be a list of strings, got [["a"]]']),
    "length a string": ({**GOOD, "length": "long"}, ['"length" must be a non-negative integer, got "long"',
                                                     LENGTH_FIX]),
    "length negative": ({**GOOD, "length": -1}, ['"length" must be a non-negative integer, got -1', LENGTH_FIX]),
    "length fractional": ({**GOOD, "length": 3.5}, ['"length" must be a non-negative integer, got 3.5']),
    "length NaN": ({**GOOD, "length": float("nan")}, ['"length" must be a non-negative integer, got NaN']),
    "length Infinity": ({**GOOD, "length": float("inf")}, ['"length" must be a non-negative integer, got Infinity']),
    "length bool": ({**GOOD, "length": True}, ['"length" must be a non-negative integer, got true']),
    "length null": ({**GOOD, "length": None}, ['"length" must be a non-negative integer, got null']),
    "all_classes a string": ({**GOOD, "all_classes": "Human"},
                             ['"all_classes" must be null or a list of strings, got "Human"', CLASSES_FIX]),
    "all_classes with a number": ({**GOOD, "all_classes": ["Human", 1]},
                                  ['"all_classes" must be null or a list of strings, got ["Human", 1]']),
    "not UTF-8": (b'{"input": "caf\xe9", "context": "x", "answers": ["a"], "length": 1, "all_classes": null}',
                  ["not UTF-8 (byte 0xe9 at byte 15 of the line)", "save the file as UTF-8"]),
    # The checks that were there before keep their messages.
    "not JSON": (b'{"input": "x"', ["not valid JSON", "fix or remove that line"]),
    "missing fields": ({"input": "x", "context": "y"},
                       ["missing field(s) ['answers', 'length', 'all_classes']; LongBench lines have"]),
    "not an object": ([GOOD], ["missing field(s) ['input', 'context', 'answers', 'length', 'all_classes']"]),
    "empty prompt": ({**GOOD, "input": " ", "context": ""}, ["empty prompt (both context and input are empty)"]),
}


def write_data(folder, bad, name="offline_count"):
    """``folder/{name}.jsonl``: a good line, a blank line, then ``bad`` on line 3 and a good line after it."""
    folder.mkdir(exist_ok=True)
    bad = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
    good = json.dumps(GOOD).encode()
    path = folder / f"{name}.jsonl"
    path.write_bytes(good + b"\n\n" + bad + b"\n" + good + b"\n")
    return path


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_line_is_refused_with_path_line_and_fix(tmp_path, case):
    bad, expected = BAD_LINES[case]
    path = write_data(tmp_path, bad)
    with pytest.raises(DataError) as err:
        load_samples("offline_count", False, str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{path}:3: "), message
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize("text", ["", "\n", " \n\t\n\r\n"], ids=["empty", "newline", "blank lines"])
def test_empty_or_blank_file_is_refused_naming_it(tmp_path, text):
    path = tmp_path / "offline_count_e.jsonl"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_samples("offline_count", True, str(tmp_path))
    assert str(err.value).startswith(f"{path} holds no samples (it is empty or blank); restore it")
    assert "--datasets" in str(err.value)


@pytest.mark.parametrize("fields", [
    {"answers": [4]}, {"answers": ["4", 4, 2.5]}, {"answers": []}, {"length": 0}, {"length": 3512.0},
    {"all_classes": []}, {"all_classes": ["Location", "Human"]}, {"input": ""}, {"context": ""},
], ids=lambda fields: json.dumps(fields))
def test_valid_lines_load_exactly_as_parsed(tmp_path, fields):
    """Numeric answers pass unchanged (pred.py copies them to the predictions as LongBench does; eval.py reads
    them as strings), and so do integral float lengths, empty class lists and one empty prompt half."""
    sample = {**GOOD, **fields}
    write_data(tmp_path, sample)
    assert load_samples("offline_count", False, str(tmp_path)) == [GOOD, sample, GOOD]


def test_crlf_line_ends_and_blank_lines_are_read_as_before(tmp_path):
    (tmp_path / "offline_count.jsonl").write_bytes(b"\r\n" + json.dumps(GOOD).encode() + b"\r\n\r\n")
    assert load_samples("offline_count", False, str(tmp_path)) == [GOOD]


def test_offline_suite_and_longbench_lines_load_unchanged(tmp_path):
    """Every file of the offline suite (and LongBench's own samsum lines, extra keys and all) loads as
    ``json.loads`` of each line: the checks change no sample, so predictions stay byte-identical."""
    from vatp.longbench.suite import TASKS, write_suite

    paths = write_suite(tmp_path, samples=3, tokens=(300, 600))
    write_jsonl(tmp_path / "samsum.jsonl", SAMSUM)
    write_jsonl(tmp_path / "samsum_e.jsonl", SAMSUM_E)
    assert len(paths) == 2 * len(TASKS)
    for path in [*paths, tmp_path / "samsum.jsonl", tmp_path / "samsum_e.jsonl"]:
        name = path.name[: -len(".jsonl")]
        dataset, e = (name[: -len("_e")], True) if name.endswith("_e") else (name, False)
        expected = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert load_samples(dataset, e, str(tmp_path)) == expected, path.name
    assert load_samples("samsum", False, str(tmp_path)) == SAMSUM


PRED_CASES = {  # a few of the above through pred.py: (the broken line, or None for an empty file; the message)
    "empty file": (None, "offline_count.jsonl holds no samples (it is empty or blank)"),
    "input null": (BAD_LINES["input null"][0], 'offline_count.jsonl:3: "input" must be a string, got null'),
    "answers a string": (BAD_LINES["answers a string"][0],
                         'offline_count.jsonl:3: "answers" must be a list of strings, got "Jasper"'),
    "length a string": (BAD_LINES["length a string"][0],
                        'offline_count.jsonl:3: "length" must be a non-negative integer, got "long"'),
    "length NaN": (BAD_LINES["length NaN"][0], 'offline_count.jsonl:3: "length" must be a non-negative integer'),
    "all_classes a string": (BAD_LINES["all_classes a string"][0],
                             'offline_count.jsonl:3: "all_classes" must be null or a list of strings'),
    "not UTF-8": (BAD_LINES["not UTF-8"][0], "offline_count.jsonl:3: not UTF-8 (byte 0xe9"),
}


@pytest.mark.parametrize("case", list(PRED_CASES))
def test_pred_refuses_bad_data_before_the_model_loads(tmp_path, case):
    bad, expected = PRED_CASES[case]
    data = tmp_path / "data"
    if bad is None:
        data.mkdir()
        (data / "offline_count.jsonl").write_text("")
    else:
        write_data(data, bad)
    save = tmp_path / "save"
    save.mkdir()
    done = subprocess.run([sys.executable, "pred.py", "--data_dir", str(data), "--datasets", "offline_count",
                           "--device", "cpu", "--save", str(save)],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("pred.py: error: ")]
    assert len(errors) == 1, done.stderr
    assert expected in errors[0]
    assert " of 1: " not in done.stderr, "stopped only after the model load"
    assert snapshot(save) == {}


# --- config entries (issue 28): type, sign and placeholders, checked where they are read ----------------

PROMPT_FIX = "a prompt fills in only {context} and {input}, as LongBench's; write a literal brace as {{ or }}"
CONFIG_CASES = {  # id: (file, key, value, what the message must say after "FILE: 'KEY' ")
    "model2maxlen a string": ("model2maxlen", MODEL, "abc", 'is "abc"; write the prompt limit in tokens as a whole '
                                                             "number >= 2, such as 3500"),
    "model2maxlen negative": ("model2maxlen", MODEL, -100, "is -100; write the prompt limit"),
    "model2maxlen 1": ("model2maxlen", MODEL, 1, "is 1; write the prompt limit"),  # keeps all: int(1/2) = 0
    "model2maxlen a float": ("model2maxlen", MODEL, 3500.0, "is 3500.0; write the prompt limit"),
    "model2maxlen true": ("model2maxlen", MODEL, True, "is true; write the prompt limit"),
    "model2path a number": ("model2path", MODEL, 5, "is 5; write the model's hub id or folder as a JSON string"),
    "dataset2maxlen 0": ("dataset2maxlen", "offline_count", 0, "is 0; write the number of tokens to generate as a "
                                                               "whole number >= 1, such as 128"),
    "dataset2maxlen a string": ("dataset2maxlen", "offline_count", "32", 'is "32"; write the number of tokens'),
    "dataset2prompt {foo}": ("dataset2prompt", "offline_count", "{context} {foo}",
                             "has the placeholder {foo}; " + PROMPT_FIX),
    "dataset2prompt {}": ("dataset2prompt", "offline_count", "{context} {}", "has the placeholder {}; "),
    "dataset2prompt {0}": ("dataset2prompt", "offline_count", "{0}", "has the placeholder {0}; "),
    "dataset2prompt attribute": ("dataset2prompt", "offline_count", "{context.upper}",
                                 "has the placeholder {context.upper}; "),
    "dataset2prompt conversion": ("dataset2prompt", "offline_count", "{context!r}", "has the placeholder {context!r}; "),
    "dataset2prompt lone brace": ("dataset2prompt", "offline_count", "{context} {", "is not a format string ("),
    "dataset2prompt a list": ("dataset2prompt", "offline_count", ["{context}"], 'is ["{context}"], not a string; '),
}


def config_with(folder, name, key, value):
    """A copy of config/ in ``folder`` with ``name``.json's ``key`` set to ``value``."""
    shutil.copytree(REPO / "config", folder)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    return folder


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_bad_config_value_is_refused_where_it_is_read(tmp_path, case):
    name, key, value, expected = CONFIG_CASES[case]
    folder = config_with(tmp_path / "config", name, key, value)
    with pytest.raises(UsageError) as err:
        resolve_model(MODEL, folder)
        dataset_configs(["offline_count"], folder)
    assert str(err.value).startswith(f"{folder / name}.json: {key!r} {expected}"), str(err.value)


def test_every_shipped_config_entry_is_valid():
    from vatp.longbench.data import config_dir, read_config

    for model in read_config("model2path"):
        if "chatglm" not in model:  # refused by name, with the reason
            assert resolve_model(model)[1] >= 2
    prompts, max_new = dataset_configs(list(read_config("dataset2prompt")))
    assert prompts == read_config("dataset2prompt") and max_new == read_config("dataset2maxlen")
    assert config_dir() == REPO / "config"


@pytest.mark.parametrize("case", ["model2maxlen a string", "dataset2maxlen 0", "dataset2prompt {foo}"])
def test_pred_refuses_a_bad_config_value_in_one_line_before_anything(tmp_path, monkeypatch, capsys, case):
    """The issue's three: model2maxlen "abc" and dataset2prompt "{foo}" were tracebacks, dataset2maxlen 0 failed
    only after the model loaded, leaving a run record with finished: null."""
    name, key, value, expected = CONFIG_CASES[case]
    monkeypatch.setenv("VATP_CONFIG_DIR", str(config_with(tmp_path / "config", name, key, value)))
    data = tmp_path / "data"
    write_data(data, GOOD)
    save = tmp_path / "save"
    before = snapshot(tmp_path)
    assert load_pred().main(["--data_dir", str(data), "--datasets", "offline_count", "--device", "cpu",
                             "--save", str(save)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"pred.py: error: {tmp_path / 'config' / name}.json: {key!r} {expected}"], err
    assert snapshot(tmp_path) == before and not save.exists()
