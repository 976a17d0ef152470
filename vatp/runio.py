"""Run records, and the one import for everything pred.py needs to write predictions.

Each dataset has its own record ``{save}/{model}/run_{dataset}.json`` beside its
predictions (per dataset, so two pred.py jobs on different datasets of one model
never overwrite each other's record)::

    {"dataset": "qasper",
     "settings": {...},                  # compared on every rerun, plus model_path
     "sessions": [{"started": "2024-06-01T12:00:00+00:00", "finished": null | "...",
                   "num_processes": 2, "args": {...},   # settings not compared
                   "versions": {"python": ..., "torch": ..., ...}, "count": null | 200}]}

A session is one pred.py invocation: a resumed run appends one, so the record tells
which versions and how many processes wrote which part. ``finished`` stays null for
a session that was killed. ``count`` is the number of predictions in the final file.

Settings that do not change a prediction (``UNCOMPARED``: device and device map,
limit, where data and predictions live, which datasets, overwrite, number of
processes, trusting remote code) are stored but not compared: a rerun with a larger ``--limit``, on other
GPUs or on more processes just continues. (A changed dataset is caught at merge by
its ``_id``/``index`` pairs instead.) Every other setting, unknown ones included, is
compared, so a new pred.py flag is safe by default. Pass the values actually used
(e.g. the resolved dtype, not None).
"""
from __future__ import annotations

import json
import logging
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from .shard import (LONGBENCH_KEYS, PredictionWriter, RunIOError, atomic_write_bytes, done_ids, final_path,
                    merge_parts, part_path, part_paths, prediction_record, remove_predictions, repair,
                    sample_ids, shard_indices)

__all__ = ["LONGBENCH_KEYS", "UNCOMPARED", "PredictionWriter", "RunIOError", "SettingsMismatchError",
           "atomic_write_bytes", "done_ids", "final_path", "finish_run", "load_run_record", "merge_parts",
           "package_versions", "part_path", "part_paths", "prediction_record", "remove_predictions", "repair",
           "run_record_path", "sample_ids", "shard_indices", "start_run"]

log = logging.getLogger(__name__)

UNCOMPARED = frozenset({"device", "device_map", "limit", "save", "data_dir", "dataset", "datasets", "overwrite",
                        "num_processes", "trust_remote_code"})
_ABSENT = "<absent>"


class SettingsMismatchError(RunIOError):
    """Existing predictions were made with other settings. ``diffs``: name -> (old, new)."""

    def __init__(self, out_dir: Path, dataset: str, diffs: dict[str, tuple[Any, Any]]):
        self.diffs = diffs
        changes = ", ".join(f"{k}: {_show(old)} → {_show(new)}" for k, (old, new) in diffs.items())
        super().__init__(f"{out_dir} holds predictions for {dataset} made with other "
                         f"settings ({changes}); pass --overwrite to delete them and start fresh, "
                         "or use another --save")


def _show(value: Any) -> str:
    return value if value is _ABSENT else json.dumps(value, ensure_ascii=False)


def run_record_path(out_dir: Path | str, dataset: str) -> Path:
    return Path(out_dir) / f"run_{dataset}.json"


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


def load_run_record(out_dir: Path | str, dataset: str) -> dict | None:
    """The run record of ``dataset``, or None if there is none."""
    path = run_record_path(out_dir, dataset)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise RunIOError(f"{path} is not valid JSON ({err}); pass --overwrite to start fresh") from None


def _write_record(out_dir: Path | str, record: dict) -> None:
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(run_record_path(out_dir, record["dataset"]), text.encode())


def _jsonable(settings: Mapping) -> dict:
    """``settings`` as they will read back from JSON (tuples become lists), so that they compare equal."""
    try:
        return json.loads(json.dumps(dict(settings)))
    except TypeError as err:
        raise RunIOError(f"run settings must be JSON values (str, number, bool, None, list, dict): {err}") from None


def _diff(old: Mapping, new: Mapping) -> dict[str, tuple[Any, Any]]:
    """Settings whose values differ, compared as JSON so that 1, 1.0 and true stay distinct."""
    def key(v):
        return json.dumps(v, sort_keys=True)
    return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(old.keys() | new.keys())
            if key(old.get(k, _ABSENT)) != key(new.get(k, _ABSENT))}


def start_run(out_dir: Path | str, dataset: str, settings: Mapping, *, model_path: str, num_processes: int = 1,
              overwrite: bool = False, uncompared: frozenset[str] = UNCOMPARED) -> dict:
    """Check ``settings`` against the existing predictions of ``dataset`` and record a new session.

    Call on rank 0 only, before any process opens a PredictionWriter (then a barrier).
    ``settings``: all CLI args (e.g. ``vars(args)``); those in ``uncompared`` are only stored.
    Raises SettingsMismatchError if predictions exist and a compared setting differs, and
    RunIOError if predictions exist without a record; with ``overwrite`` it deletes them instead.
    Returns the record written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _jsonable(settings)
    compared = {k: v for k, v in settings.items() if k not in uncompared} | {"model_path": model_path}
    record = None  # kept only to continue existing predictions: a record without any protects nothing
    if overwrite:
        if removed := remove_predictions(out_dir, dataset):
            log.warning("--overwrite: deleted %d prediction file(s) of %s in %s", len(removed), dataset, out_dir)
    elif final_path(out_dir, dataset).exists() or part_paths(out_dir, dataset):
        record = load_run_record(out_dir, dataset)
        if record is None:
            raise RunIOError(f"{out_dir} holds predictions for {dataset} but no {run_record_path(out_dir, dataset).name}, "
                             "so their settings are unknown; pass --overwrite to delete them, or use another --save")
        old = {k: v for k, v in record["settings"].items() if k not in uncompared}
        if diffs := _diff(old, compared):
            raise SettingsMismatchError(out_dir, dataset, diffs)
    versions = package_versions()
    if record is not None:
        if changed := _diff(record["sessions"][-1]["versions"], versions):
            log.warning("resuming %s with other versions than the previous session: %s", dataset,
                        ", ".join(f"{k}: {_show(a)} → {_show(b)}" for k, (a, b) in changed.items()))
    else:
        record = {"dataset": dataset, "settings": compared, "sessions": []}
    record["sessions"].append({"started": _utc_now(), "finished": None, "num_processes": num_processes,
                               "args": {k: v for k, v in settings.items() if k in uncompared},
                               "versions": versions, "count": None})
    _write_record(out_dir, record)
    return record


def finish_run(out_dir: Path | str, dataset: str, count: int) -> dict:
    """Stamp the end time and the final file's line ``count`` on the last session; return the record."""
    record = load_run_record(out_dir, dataset)
    if record is None or not record.get("sessions"):
        raise RunIOError(f"no run record for {dataset} in {out_dir}: call start_run before finish_run")
    record["sessions"][-1].update(finished=_utc_now(), count=count)
    _write_record(out_dir, record)
    return record
