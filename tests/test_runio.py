"""Prediction files and run records: resume after SIGKILL, sharding, merging, settings checks."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HANG_S
from vatp.longbench import prediction_files
from vatp.longbench.runs import (PredictionWriter, RunIOError, SettingsMismatchError, done_ids, final_path, finish_run,
                        load_run_record, merge_parts, part_path, part_paths, prediction_record,
                        run_record_path, sample_ids, shard_indices, start_run)

DS = "qasper"


def sample(i: int) -> dict:
    return {"_id": f"id{i:03d}", "answers": [f"answer {i}"], "all_classes": None, "length": 100 * i}


def record(i: int) -> dict:
    pred = "é\n" * (50_000 if i % 5 == 3 else i)  # a few ~100 KB lines; unicode and newlines inside
    return prediction_record(pred, sample(i), i, f"id{i:03d}")


def expected_bytes(indices) -> bytes:
    return b"".join((json.dumps(record(i), ensure_ascii=False) + "\n").encode() for i in sorted(indices))


def write_shards(out, n, world, keep=lambda i: True):
    """Each rank writes the samples of its shard that ``keep`` selects and that are not done."""
    for rank in range(world):
        with PredictionWriter(out, DS, rank, world) as w:
            for i in shard_indices(n, rank, world):
                if keep(i) and f"id{i:03d}" not in w.done:
                    w.write(record(i))


def merge(out) -> int:
    return merge_parts(final_path(out, DS), part_paths(out, DS))


# --- sharding and merging -------------------------------------------------------------------

def test_shard_indices_partition_the_dataset():
    for n in range(0, 23):
        for world in range(1, 6):
            shards = [list(shard_indices(n, r, world)) for r in range(world)]
            assert sorted(sum(shards, [])) == list(range(n))
            assert shards == [list(shard_indices(n, r, world)) for r in range(world)]
    assert list(shard_indices(7, 1, 3)) == [1, 4]
    for bad in [(5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)]:
        with pytest.raises(RunIOError):
            shard_indices(*bad)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_merge_gives_dataset_order_for_any_world(tmp_path, world):
    write_shards(tmp_path, 17, world)
    assert merge(tmp_path) == 17
    assert final_path(tmp_path, DS).read_bytes() == expected_bytes(range(17))
    assert not (tmp_path / f"{DS}.parts").exists()
    lines = [json.loads(line) for line in final_path(tmp_path, DS).read_text().splitlines()]
    assert [r["index"] for r in lines] == list(range(17))  # eval only needs the LongBench keys:
    assert all(set(r) == {"pred", "answers", "all_classes", "length", "_id", "index"} for r in lines)


def test_resume_with_other_world_and_larger_limit(tmp_path):
    write_shards(tmp_path, 10, 2, keep=lambda i: i % 3 != 0)  # killed half way, on 2 processes
    write_shards(tmp_path, 10, 3, keep=lambda i: i < 6)      # resumed on 3, killed again
    assert merge(tmp_path) == len({i for i in range(10) if i % 3 != 0 or i < 6})
    write_shards(tmp_path, 14, 1)                             # resumed on 1 with a larger --limit
    assert merge(tmp_path) == 14
    assert final_path(tmp_path, DS).read_bytes() == expected_bytes(range(14))


def test_merge_drops_duplicates_left_by_a_kill_after_replace(tmp_path):
    write_shards(tmp_path, 9, 2)
    saved = {p: p.read_bytes() for p in part_paths(tmp_path, DS)}
    merge(tmp_path)
    for p, data in saved.items():  # as if killed between os.replace and deleting the parts
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
    assert merge(tmp_path) == 9
    assert final_path(tmp_path, DS).read_bytes() == expected_bytes(range(9))


def test_merge_refuses_a_part_still_being_written(tmp_path):
    with PredictionWriter(tmp_path, DS, 0, 2) as w:
        w.write(record(0))
        with pytest.raises(RunIOError, match="barrier"):
            merge(tmp_path)
    assert merge(tmp_path) == 1


def test_merge_refuses_a_changed_dataset(tmp_path):
    write_shards(tmp_path, 3, 1)
    merge(tmp_path)
    with PredictionWriter(tmp_path, DS) as w:
        w.write(prediction_record("x", sample(1), 1, "other-id"))
    with pytest.raises(RunIOError, match="dataset changed"):
        merge(tmp_path)


# --- writer and resume ----------------------------------------------------------------------

def test_reopen_drops_partial_last_line(tmp_path, caplog):
    with PredictionWriter(tmp_path, DS) as w:
        for i in range(3):
            w.write(record(i))
    path = part_path(tmp_path, DS, 0, 1)
    whole = path.read_bytes()
    with open(path, "ab") as f:  # a write cut short by a crash
        f.write(json.dumps(record(3)).encode()[:40])
    assert done_ids([path]) == {"id000", "id001", "id002"}  # readers ignore it without touching the file
    with caplog.at_level(logging.WARNING), PredictionWriter(tmp_path, DS) as w:
        assert w.done == {"id000", "id001", "id002"}
        assert path.read_bytes() == whole
        w.write(record(3))
    assert "incomplete last line" in caplog.text
    assert path.read_bytes() == expected_bytes(range(4))


def test_invalid_last_line_is_dropped_but_damage_inside_raises(tmp_path):
    with PredictionWriter(tmp_path, DS) as w:
        w.write(record(0))
    path = part_path(tmp_path, DS, 0, 1)
    with open(path, "ab") as f:
        f.write(b"\x00\x00garbage\n")  # e.g. zero-filled blocks after a power loss
    assert prediction_files.repair(path) == 10
    assert path.read_bytes() == expected_bytes([0])
    with open(path, "ab") as f:
        f.write(b"garbage\n" + expected_bytes([1]))
    with pytest.raises(RunIOError, match="line 2"):
        done_ids([path])


def test_writer_rejects_bad_use(tmp_path):
    with PredictionWriter(tmp_path, DS) as w:
        w.write(record(0))
        with pytest.raises(RunIOError, match="already predicted"):
            w.write(record(0))
        with pytest.raises(RunIOError, match="lacks"):
            w.write({"pred": "x"})
        with pytest.raises(RunIOError, match="int index"):
            w.write(prediction_record("x", sample(1), "1", "id001"))
        with pytest.raises(RunIOError, match="another process"):
            PredictionWriter(tmp_path, DS).__enter__()
    with pytest.raises(RunIOError, match="outside"):
        w.write(record(1))


def test_sample_ids_fall_back_to_index_and_stay_unique():
    samples = [{"_id": "a"}, {}, {"_id": "a"}, {"_id": ""}]
    assert sample_ids(samples) == ["a", "#1", "a#2", "#3"]


# --- real SIGKILL ---------------------------------------------------------------------------

CHILD = r'''
"""Write predictions slowly with PredictionWriter, then merge; killed by the test at random moments."""
import importlib.util, os, signal, sys, time
spec = importlib.util.spec_from_file_location("prediction_files", sys.argv[1])  # by path: skips vatp/__init__
prediction_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prediction_files)
out, mode, n, rank, world = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if len(sys.argv) > 7:  # SIGKILL itself half way through the line of index argv[7]: a write cut short, for sure
    cut_end, real_write = b'"index": %d}\n' % int(sys.argv[7]), os.write
    def write(fd, data):
        if bytes(data).endswith(cut_end):
            real_write(fd, data[:len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)
    os.write = write
if mode in ("write", "all"):
    with prediction_files.PredictionWriter(out, "qasper", rank, world) as w:
        for i in prediction_files.shard_indices(n, rank, world):
            sid = f"id{i:03d}"
            if sid not in w.done:
                pred = ("é\n" * 50_000) if i % 4 == 1 else f"answer {i} " * (i * 37 % 300)
                w.write(prediction_files.prediction_record(pred, {"answers": [str(i)], "all_classes": None, "length": i}, i, sid))
                time.sleep(0.01)
if mode in ("merge", "all"):
    prediction_files.merge_parts(prediction_files.final_path(out, "qasper"), prediction_files.part_paths(out, "qasper"))
'''
N = 40


def child(script, out, mode, rank=0, world=1, *cut):
    args = [prediction_files.__file__, out, mode, N, rank, world, *cut]
    return subprocess.Popen([sys.executable, str(script), *map(str, args)])


def run_to_end(script, out, mode, world=1):
    procs = [child(script, out, mode, r, world) for r in range(world)]
    assert [p.wait(timeout=HANG_S) for p in procs] == [0] * world


def kill_after(procs, delay):
    time.sleep(delay)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=HANG_S)


def assert_same_file(got: Path, want: Path):
    got_lines, want_lines = got.read_bytes().split(b"\n"), want.read_bytes().split(b"\n")
    assert len(got_lines) == len(want_lines)
    for k, (a, b) in enumerate(zip(got_lines, want_lines)):
        assert a == b, f"line {k + 1} differs"
    assert got.read_bytes() == want.read_bytes()


@pytest.fixture
def reference(tmp_path):
    """The child script, the final file of an uninterrupted run, and how long that run took."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    start = time.monotonic()
    run_to_end(script, tmp_path / "ref", "all")
    return script, final_path(tmp_path / "ref", DS), time.monotonic() - start


def test_sigkill_at_random_moments_then_resume(tmp_path, reference):
    script, want, seconds = reference
    out, rng = tmp_path / "killed", random.Random(0)
    part, cuts = part_path(out, DS, 0, 1), 0
    for _ in range(6):
        kill_after([child(script, out, "all")], rng.uniform(0.02, seconds / 3))
        todo = [i for i in range(N) if f"id{i:03d}" not in done_ids([final_path(out, DS), part])]
        if todo:  # timing alone rarely cuts a write short: force it, on one of the next samples
            assert child(script, out, "all", 0, 1, rng.choice(todo[:3])).wait(timeout=HANG_S) == -signal.SIGKILL
            assert not part.read_bytes().endswith(b"\n")
            cuts += 1
    assert cuts >= 3
    run_to_end(script, out, "all")
    assert_same_file(final_path(out, DS), want)


def test_sigkill_data_parallel_resumed_with_other_worlds(tmp_path, reference):
    script, want, seconds = reference
    out, rng = tmp_path / "killed", random.Random(1)
    for world in (2, 3, 1, 2):
        kill_after([child(script, out, "write", r, world) for r in range(world)], rng.uniform(0.02, seconds / 2))
    run_to_end(script, out, "write", world=3)
    kill_after([child(script, out, "merge")], 0.05)  # a kill during the merge, maybe
    run_to_end(script, out, "merge")
    assert_same_file(final_path(out, DS), want)


# --- run records ----------------------------------------------------------------------------

ARGS = {"model": "llama2-7b-chat-4k", "e": False, "heavy_ratio": 0.1, "recent_ratio": 0.1, "h2o": True,
        "apval": True, "sink_len": 20, "backend": "mask", "dtype": "float16", "device": "cuda:0", "limit": None,
        "save": "pred", "overwrite": False}


def start(out, args=ARGS, **kw):
    return start_run(out, DS, args, model_path="meta-llama/Llama-2-7b-chat-hf", **kw)


def test_run_record_holds_settings_versions_and_times(tmp_path):
    start(tmp_path, num_processes=2)
    write_shards(tmp_path, 4, 2)
    finish_run(tmp_path, DS, merge(tmp_path))
    rec = load_run_record(tmp_path, DS)
    assert rec["settings"]["heavy_ratio"] == 0.1 and rec["settings"]["model_path"].startswith("meta-llama")
    assert "device" not in rec["settings"] and rec["sessions"][0]["args"]["device"] == "cuda:0"
    (session,) = rec["sessions"]
    assert session["num_processes"] == 2 and session["count"] == 4
    assert {"python", "torch", "transformers", "vatp"} <= session["versions"].keys()
    assert session["versions"]["python"] and session["versions"]["torch"]
    assert session["started"].endswith("+00:00") and session["started"] <= session["finished"]


def test_changed_setting_is_refused_and_named(tmp_path):
    start(tmp_path)
    write_shards(tmp_path, 2, 1)
    with pytest.raises(SettingsMismatchError) as err:
        start(tmp_path, {**ARGS, "heavy_ratio": 0.25, "apval": False})
    assert err.value.diffs == {"apval": (True, False), "heavy_ratio": (0.1, 0.25)}
    assert "heavy_ratio: 0.1 → 0.25" in str(err.value) and "apval: true → false" in str(err.value)
    assert "--overwrite" in str(err.value) and "--save" in str(err.value)
    with pytest.raises(SettingsMismatchError, match=r"new_flag: <absent> → 3"):
        start(tmp_path, {**ARGS, "new_flag": 3})


def test_uncompared_settings_resume(tmp_path):
    start(tmp_path)
    write_shards(tmp_path, 2, 1)
    rec = start(tmp_path, {**ARGS, "device": "cuda:1", "limit": 50, "overwrite": False}, num_processes=4)
    assert len(rec["sessions"]) == 2 and rec["sessions"][1]["args"]["limit"] == 50
    assert done_ids(part_paths(tmp_path, DS)) == {"id000", "id001"}


def test_overwrite_deletes_predictions_and_starts_fresh(tmp_path):
    start(tmp_path)
    write_shards(tmp_path, 3, 1)
    merge(tmp_path)
    write_shards(tmp_path, 5, 2)
    rec = start(tmp_path, {**ARGS, "heavy_ratio": 0.25}, overwrite=True)
    assert rec["settings"]["heavy_ratio"] == 0.25 and len(rec["sessions"]) == 1
    assert not final_path(tmp_path, DS).exists() and part_paths(tmp_path, DS) == []
    assert load_run_record(tmp_path, DS) == rec


def test_predictions_without_record_are_refused(tmp_path):
    write_shards(tmp_path, 2, 1)
    with pytest.raises(RunIOError, match="settings are unknown"):
        start(tmp_path)
    run_record_path(tmp_path, DS).write_text("{broken")
    with pytest.raises(RunIOError, match="not valid JSON"):
        start(tmp_path)
    start(tmp_path, overwrite=True)


def test_record_without_predictions_is_replaced(tmp_path):
    start(tmp_path)
    rec = start(tmp_path, {**ARGS, "heavy_ratio": 0.3})
    assert rec["settings"]["heavy_ratio"] == 0.3 and len(rec["sessions"]) == 1


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    start(tmp_path)
    before = run_record_path(tmp_path, DS).read_bytes()

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        finish_run(tmp_path, DS, 0)
    assert run_record_path(tmp_path, DS).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_record_path(tmp_path, DS).name]
