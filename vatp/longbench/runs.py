"""Run records and run locks, and the one import for everything pred.py needs to write predictions.

Each dataset has its own record ``{save}/{model}/run_{dataset}.json`` beside its
predictions (per dataset, so two pred.py jobs on different datasets of one model
never overwrite each other's record)::

    {"dataset": "qasper",
     "settings": {...},                  # compared on every rerun, plus model_path
     "sessions": [{"started": "2024-06-01T12:00:00+00:00", "finished": null | "...",
                   "num_processes": 2, "args": {...},   # settings not compared
                   "versions": {"python": ..., "torch": ..., ...}, "samples": 224,
                   "count": null | 200}]}

A session is one pred.py invocation: a resumed run appends one, so the record tells
which versions and how many processes wrote which part. ``finished`` stays null for
a session that was killed. ``samples`` is the number of samples in the dataset (before
``--limit``; absent in records older than it), ``count`` the number of predictions in
the final file.

One owner per dataset: a run holds ``RunLock`` (``run_{dataset}.lock``, an exclusive
flock) from before it reads the record until it ends, so the record always describes
the predictions beside it. The steps, all on rank 0::

    with RunLock(out_dir, dataset, settings, model_path=...):    # refuses a second run at once
        plan = check_run(out_dir, dataset, settings, ...)       # refuses, writes nothing
        ...                                                      # load the model
        begin_run(plan, num_processes)                          # the record gains a session
        ...                                                      # every rank: PredictionWriter
        finish_run(out_dir, dataset, merge_parts(...))

``start_run`` is check_run and begin_run in one call.

Settings that do not change a prediction (``UNCOMPARED``: device and device map,
limit, where data and predictions live, which datasets, overwrite, number of
processes, trusting remote code) are stored but not compared: a rerun with a larger ``--limit``, on other
GPUs or on more processes just continues. (A changed dataset is caught by its
``_id``/``index`` pairs instead.) Every other setting, unknown ones included, is
compared, so a new pred.py flag is safe by default. Pass the values actually used
(e.g. the resolved dtype, not None).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from .prediction_files import (HOST, LONGBENCH_KEYS, PredictionWriter, RunIOError, atomic_write_bytes, check_predictions,
                               done_ids, final_path, merge_parts, open_locked, part_path, part_paths, parts_dir,
                               pid_alive, prediction_record, refuse_links, remove_predictions, repair, sample_ids,
                               shard_indices)

__all__ = ["LONGBENCH_KEYS", "UNCOMPARED", "PredictionWriter", "RunIOError", "RunLock", "RunLockedError", "RunPlan",
           "SettingsMismatchError", "atomic_write_bytes", "begin_run", "check_predictions", "check_run", "done_ids",
           "final_path", "finish_run", "load_run_record", "merge_parts", "os_error_message", "package_versions",
           "part_path", "part_paths", "prediction_record", "remove_predictions", "repair", "run_lock_path",
           "run_record_path", "sample_ids", "shard_indices", "start_run"]

log = logging.getLogger(__name__)

UNCOMPARED = frozenset({"device", "device_map", "limit", "save", "data_dir", "dataset", "datasets", "overwrite",
                        "num_processes", "trust_remote_code", "batch_size"})
_ABSENT = "<absent>"


class SettingsMismatchError(RunIOError):
    """Existing predictions were made with other settings. ``diffs``: name -> (old, new)."""

    def __init__(self, out_dir: Path, dataset: str, diffs: dict[str, tuple[Any, Any]]):
        self.diffs = diffs
        super().__init__(f"{out_dir} holds predictions for {dataset} made with other "
                         f"settings ({_changes(diffs)}); pass --overwrite to delete them and start fresh, "
                         "or use another --save")


class RunLockedError(RunIOError):
    """Another run holds the lock of ``dataset``. ``holder``: what it wrote into the lock file ({} if unknown)."""

    def __init__(self, path: Path, dataset: str, holder: Mapping, settings: Mapping):
        self.holder = holder
        if "settings" not in holder:
            same, fix = "", "wait until it ends, or use another --save"
        elif diffs := _diff(holder["settings"], settings):
            same = f" with other settings (its → yours: {_changes(diffs)})"
            fix = "use another --save (or wait until it ends, then pass --overwrite to replace its predictions)"
        else:
            same, fix = " with the same settings", ("wait until it ends, or use another --save; to run on several "
                                                   "processes, start one run with accelerate launch --num_processes N")
        super().__init__(f"{path}: {dataset} is being predicted by another run ({_describe(holder)}){same}; "
                         f"only one run at a time may write a --save, model and dataset: {fix}")


def _describe(holder: Mapping) -> str:
    """Who holds a lock, from what it wrote into the lock file."""
    if not holder:
        return "it has not written who it is"
    who = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
    return f"{who}: {holder['summary']}" if holder.get("summary") else who


def _show(value: Any) -> str:
    return value if value is _ABSENT else json.dumps(value, ensure_ascii=False)


def _changes(diffs: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {_show(old)} → {_show(new)}" for k, (old, new) in diffs.items())


def run_record_path(out_dir: Path | str, dataset: str) -> Path:
    return Path(out_dir) / f"run_{dataset}.json"


def run_lock_path(out_dir: Path | str, dataset: str) -> Path:
    return Path(out_dir) / f"run_{dataset}.lock"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    """Python and package versions, and the vatp git commit (``-dirty`` with local changes); None if unknown."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "vatp"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        versions["vatp_git"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        versions["vatp_git"] = None
    return versions


_RECORD_KEYS = ("dataset", "settings", "sessions")


def load_run_record(out_dir: Path | str, dataset: str) -> dict | None:
    """The run record of ``dataset``, or None if there is none; RunIOError if it is not one start_run wrote."""
    path = run_record_path(out_dir, dataset)
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as err:  # UnicodeDecodeError included
        problem = f"not valid JSON ({err})"
    else:
        problem = _record_problem(record, dataset)
    if problem:
        raise RunIOError(f"{path}: {problem}; restore it, or pass --overwrite to delete the predictions of "
                         f"{dataset} beside it and start fresh")
    return record


def _record_problem(record: Any, dataset: str) -> str | None:
    """What makes ``record`` unlike a run record of ``dataset`` as start_run writes it; None if nothing."""
    if not isinstance(record, dict):
        return f"holds {json.dumps(record)[:40]} instead of a run record (a JSON object)"
    if missing := [k for k in _RECORD_KEYS if k not in record]:
        return "the run record lacks " + ", ".join(f'"{k}"' for k in missing)
    if record["dataset"] != dataset:
        return f'"dataset" is {_show(record["dataset"])}, not "{dataset}"'
    if not isinstance(record["settings"], dict):
        return '"settings" is not an object'
    sessions = record["sessions"]
    if not (isinstance(sessions, list) and sessions and all(isinstance(x, dict) for x in sessions)):
        return '"sessions" is not a non-empty list of objects'
    if not isinstance(sessions[-1].get("versions"), dict):
        return 'the last session has no "versions" object'
    if not isinstance(sessions[-1].get("args", {}), dict):
        return 'the last session\'s "args" is not an object'
    return None


def _write_record(out_dir: Path | str, record: dict) -> None:
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(run_record_path(out_dir, record["dataset"]), text.encode())


def _jsonable(settings: Mapping) -> dict:
    """``settings`` as they will read back from JSON (tuples become lists), so that they compare equal."""
    try:
        return json.loads(json.dumps(dict(settings)))
    except TypeError as err:
        raise RunIOError(f"run settings must be JSON values (str, number, bool, None, list, dict): {err}") from None


def _compared(settings: Mapping, model_path: str, uncompared: frozenset[str]) -> dict:
    """The settings a rerun must repeat: all but ``uncompared``, plus the model path."""
    return {k: v for k, v in settings.items() if k not in uncompared} | {"model_path": model_path}


def _diff(old: Mapping, new: Mapping) -> dict[str, tuple[Any, Any]]:
    """Settings whose values differ, compared as JSON so that 1, 1.0 and true stay distinct."""
    def key(v):
        return json.dumps(v, sort_keys=True)
    return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(old.keys() | new.keys())
            if key(old.get(k, _ABSENT)) != key(new.get(k, _ABSENT))}


class RunLock:
    """The one owner of a dataset's predictions and run record, for a whole run. A context manager.

    Entering takes ``run_{dataset}.lock`` in ``out_dir`` with an exclusive ``flock`` and
    writes who holds it (pid, host, start time, ``summary`` and the compared settings);
    another process entering meanwhile gets RunLockedError at once, naming the holder and
    whether its settings are the same. The kernel releases the lock when the holder exits
    or dies (even by SIGKILL), so a lock file left by a killed run is simply taken over.
    Exiting deletes the lock file, and the folders entering created if they are still
    empty, so that a refused run leaves nothing behind.
    """

    HOLDER_WAIT_S = 2.0  # how long to wait for a holder that has just locked to write its name

    def __init__(self, out_dir: Path | str, dataset: str, settings: Mapping, *, model_path: str, summary: str = "",
                 uncompared: frozenset[str] = UNCOMPARED):
        self.path, self.dataset, self.summary = run_lock_path(out_dir, dataset), dataset, summary
        self.settings = _compared(_jsonable(settings), model_path, uncompared)
        self._fd: int | None = None
        self._made: list[Path] = []

    def __enter__(self) -> RunLock:
        self._made = _missing_folders(self.path.parent)
        try:
            self._fd = self._acquire()
            holder = {"pid": os.getpid(), "host": HOST, "started": _utc_now(), "summary": self.summary,
                      "settings": self.settings}
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(holder, ensure_ascii=False) + "\n").encode(), 0)
        except BaseException as err:
            if isinstance(err, OSError) and err.errno is not None and err.filename is None:
                err.filename = str(self.path)
            self.__exit__()
            raise
        return self

    def _acquire(self) -> int:
        """The locked file descriptor, or RunLockedError naming the holder."""
        while (fd := open_locked(self.path, os.O_RDWR)) is None:
            holder = self._holder()
            if holder is not None:  # None: it let go meanwhile, try again
                raise RunLockedError(self.path, self.dataset, holder, self.settings)
        return fd

    def _holder(self) -> dict | None:
        """What the holder wrote into the lock file ({} if it wrote nothing yet); None if the file is gone."""
        deadline = time.monotonic() + self.HOLDER_WAIT_S
        while True:
            try:
                holder = json.loads(self.path.read_bytes())
            except FileNotFoundError:
                return None
            except ValueError:  # empty or half written: it has just taken the lock
                holder = None
            if isinstance(holder, dict) and not (holder.get("host") == HOST and not pid_alive(holder.get("pid"))):
                return holder  # (a dead pid on this host: a killed run's name, not yet replaced by the holder's)
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        """Delete the lock file, then let go of it; remove the folders entering made if empty. Raises nothing."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(fd)
        for folder in self._made:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty (predictions, another run's lock) or never made
                break


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@dataclasses.dataclass
class RunPlan:
    """What begin_run will write for one dataset, as check_run decided it."""

    out_dir: Path
    dataset: str
    record: dict  # the record to continue (its sessions so far), or a new one without sessions
    args: dict  # the uncompared settings, for the new session
    overwrite: bool  # delete the old predictions first


def check_run(out_dir: Path | str, dataset: str, settings: Mapping, *, model_path: str, overwrite: bool = False,
              ids: Sequence[str] | None = None, uncompared: frozenset[str] = UNCOMPARED) -> RunPlan:
    """Check ``settings`` against the existing predictions of ``dataset``; write nothing.

    Call on rank 0 holding the dataset's RunLock, before the model loads.
    ``settings``: all CLI args (e.g. ``vars(args)``); those in ``uncompared`` are only stored.
    Unless ``overwrite`` (which deletes them in begin_run), existing predictions must have a
    valid record with the same compared settings (else SettingsMismatchError or RunIOError),
    no damaged line, and, given the dataset's ``ids``, the same sample at each index.
    A symbolic link as the record, the final file, the parts folder or a part file is
    refused (RunIOError), with ``overwrite`` too: the run never follows one.
    """
    out_dir = Path(out_dir)
    refuse_links([run_record_path(out_dir, dataset), final_path(out_dir, dataset), parts_dir(out_dir, dataset),
                  *part_paths(out_dir, dataset)])
    settings = _jsonable(settings)
    compared = _compared(settings, model_path, uncompared)
    new = {"dataset": dataset, "settings": compared, "sessions": []}
    plan = RunPlan(out_dir, dataset, new, {k: v for k, v in settings.items() if k in uncompared}, overwrite)
    predictions = [final_path(out_dir, dataset), *part_paths(out_dir, dataset)]
    if overwrite or not any(p.exists() for p in predictions):
        return plan  # a record without predictions protects nothing: it is replaced
    record = load_run_record(out_dir, dataset)
    if record is None:
        raise RunIOError(f"{out_dir} holds predictions for {dataset} but no {run_record_path(out_dir, dataset).name}, "
                         "so their settings are unknown; pass --overwrite to delete them, or use another --save")
    if diffs := _diff({k: v for k, v in record["settings"].items() if k not in uncompared}, compared):
        raise SettingsMismatchError(out_dir, dataset, diffs)
    check_predictions(predictions, ids)
    return dataclasses.replace(plan, record=record)


def begin_run(plan: RunPlan, num_processes: int = 1, samples: int | None = None) -> dict:
    """Write what check_run planned: delete the old predictions if asked, then record a new session.

    ``samples``: the number of samples in the dataset, before ``--limit`` (eval.py reads it to
    tell a subset from the whole dataset). Call on rank 0, before any process opens a
    PredictionWriter (then a barrier). Returns the record written. If writing it fails, the
    record on disk is unchanged.
    """
    out_dir, dataset = plan.out_dir, plan.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan.overwrite and (removed := remove_predictions(out_dir, dataset)):
        log.warning("--overwrite: deleted %d prediction file(s) of %s in %s", len(removed), dataset, out_dir)
    versions = package_versions()
    record = json.loads(json.dumps(plan.record))  # a copy: a failed write leaves the plan as it was
    if record["sessions"] and (changed := _diff(record["sessions"][-1]["versions"], versions)):
        log.warning("resuming %s with other versions than the previous session: %s", dataset, _changes(changed))
    record["sessions"].append({"started": _utc_now(), "finished": None, "num_processes": num_processes,
                               "args": plan.args, "versions": versions, "samples": samples, "count": None})
    _write_record(out_dir, record)
    return record


def start_run(out_dir: Path | str, dataset: str, settings: Mapping, *, model_path: str, num_processes: int = 1,
              overwrite: bool = False, uncompared: frozenset[str] = UNCOMPARED) -> dict:
    """check_run, then begin_run: refuse other settings, or record a new session. Returns the record written."""
    plan = check_run(out_dir, dataset, settings, model_path=model_path, overwrite=overwrite, uncompared=uncompared)
    return begin_run(plan, num_processes)


def finish_run(out_dir: Path | str, dataset: str, count: int) -> dict:
    """Stamp the end time and the final file's line ``count`` on the last session; return the record."""
    record = load_run_record(out_dir, dataset)
    if record is None:
        raise RunIOError(f"no run record for {dataset} in {out_dir}: call start_run before finish_run")
    record["sessions"][-1].update(finished=_utc_now(), count=count)
    _write_record(out_dir, record)
    return record


_OS_FIXES = {
    errno.ENOSPC: "free some space there, or use another --save, then rerun the same command: the predictions "
                  "made so far are kept and the rerun resumes",
    errno.EROFS: "make that folder writable, or use another --save",
    errno.ENOTDIR: "a part of that path is a file, not a folder: --save must name a folder",
    errno.EEXIST: "it is a file, not a folder: --save must name a folder",
    errno.EISDIR: "it is a folder where a file belongs: move it away",
}
_OS_FIXES[errno.EDQUOT] = _OS_FIXES[errno.ENOSPC]
_OS_FIXES[errno.EACCES] = _OS_FIXES[errno.EPERM] = _OS_FIXES[errno.EROFS]


def os_error_message(err: OSError) -> str:
    """One line for an OSError: the path, what the system said, and the fix."""
    if err.strerror is None:
        text = str(err)
    else:
        where = "".join(f"{name}: " for name in (err.filename, err.filename2) if name is not None)
        text = f"{where}{err.strerror}; {_OS_FIXES.get(err.errno, 'check it, then rerun')}"
    return " ".join(text.splitlines())
