"""Sharded, crash-safe JSONL prediction files: split, append, resume, merge.

Layout under ``out_dir`` (``{save}/{model}``), for one dataset::

    {dataset}.jsonl                                  final file, dataset order
    {dataset}.parts/part-{rank}-of-{world}.jsonl     one append-only log per process

Every line is one JSON object: LongBench's ``pred, answers, all_classes, length``,
then ``_id`` (the sample's identity: which samples are done, deduplication) and
``index`` (its position in the dataset: order of the final file). Eval reads the
four LongBench keys and ignores the other two.

Crash safety: a line is appended with one ``os.write`` and then ``fsync``, so a
SIGKILL leaves at most one partial last line; its owner cuts it off on reopen and
every reader ignores it. The final file is only replaced whole (temp file +
``os.replace``) and part files are deleted only after that, so a kill at any moment
loses nothing, and the next merge drops the duplicates it may leave.

Failed writes: an append, a record or a merge that fails (full disk, read-only
folder) leaves the files exactly as they were before the call, and the OSError
it raises names the file (``OSError.filename``), also for errors of ``write``
and ``fsync``, which carry no name of their own.

Links: a run never follows a symbolic link it did not make. Every file it opens
for writing (lock, part, temp file) is opened with ``O_NOFOLLOW``, and a link
where one of its files or its parts folder belongs is refused with RunIOError
(``refuse_links``): in a shared, group-writable ``--save``, anyone could
otherwise point a run's file at any file the user can write.

This module imports nothing from vatp (nor torch): it is the bottom layer.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

LONGBENCH_KEYS = ("pred", "answers", "all_classes", "length")
HOST = socket.gethostname()


class RunIOError(Exception):
    """A prediction file or run record cannot be used as is; the message says what to do."""


def link_error(path: Path) -> RunIOError:
    """The refusal of a symbolic link at ``path``, where a run keeps a file (or folder) of its own."""
    try:
        target = f" to {os.readlink(path)}"
    except OSError:  # gone meanwhile
        target = ""
    return RunIOError(f"{path}: a symbolic link{target} where the run keeps a file of its own; runs follow no "
                      "link they did not make (in a shared folder, one could make them overwrite any file you can "
                      "write): delete the link, or use another output folder")


def refuse_links(paths: Iterable[Path | str]) -> None:
    """RunIOError naming the first of ``paths`` that is a symbolic link (a dangling one included)."""
    for path in map(Path, paths):
        if path.is_symlink():
            raise link_error(path)


def open_no_link(path: Path | str, flags: int, mode: int = 0o666) -> int:
    """``os.open`` with ``O_NOFOLLOW``: a symbolic link at ``path`` is refused (``link_error``), never opened."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as err:  # ELOOP: a link; EEXIST: a link where O_EXCL creates
        if err.errno in (errno.ELOOP, errno.EEXIST) and os.path.islink(path):
            raise link_error(Path(path)) from None
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` by ``data`` whole: a reader (or a crash) sees the old file or the new one.

    Safe with several writers of one path (the last replace wins): each writes its own
    temp file ``.{name}.{host}.{pid}.{random}.tmp`` (hidden, and not *.jsonl: eval skips
    it) and removes only its own, or those that killed processes on this host left behind.
    On failure ``path`` is unchanged and the OSError names ``path``.
    """
    path = Path(path)
    _remove_dead_temps(path)
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    created = False
    try:
        fd = open_no_link(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        created = True
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        if created:
            with contextlib.suppress(OSError):  # never hide the first error behind a second one
                tmp.unlink()
        _name(err, path, replace=True)
        raise
    _fsync_dir(path.parent)


def _remove_dead_temps(path: Path) -> None:
    """Delete the temp files of ``path`` whose writer, a process on this host, no longer runs."""
    for tmp in path.parent.glob(f".{path.name}.{HOST}.*.tmp"):
        pid = tmp.name[len(f".{path.name}.{HOST}."):].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def pid_alive(pid: object) -> bool:
    """Whether process ``pid`` of this host runs (False for anything but a positive int)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: one ``os.write`` in practice; the loop only guards against a short write."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _name(err: BaseException, path: Path, replace: bool = False) -> None:
    """Give an OSError of a write, fsync or close (which carry no file name) the name of ``path``.

    With ``replace``, also name ``path`` instead of the hidden temp file that stands in for it.
    """
    if isinstance(err, OSError) and err.errno is not None and (replace or err.filename is None):
        err.filename, err.filename2 = str(path), None


def _fsync_dir(path: Path) -> None:
    """Make a created, renamed or deleted directory entry durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sample_ids(samples: Iterable[Mapping]) -> list[str]:
    """The identity of each sample: LongBench's ``_id``, or ``#{index}`` where it has none.

    A repeated ``_id`` gets ``#{index}`` appended (with a warning), so two samples are
    never taken for one, which would skip the second as already done; where that id is
    taken too, the first free one of ``#{index}#1``, ``#{index}#2``, ... An id depends
    only on the samples before it, so a larger ``--limit`` keeps the ids already given.
    """
    ids: list[str] = []
    seen: set[str] = set()
    for index, sample in enumerate(samples):
        sid = sample.get("_id")
        sid = f"#{index}" if sid in (None, "") else str(sid)
        if sid in seen:
            renamed = _unused(f"{sid}#{index}", seen)
            log.warning("sample %d repeats _id %r; it is identified as %r", index, sid, renamed)
            sid = renamed
        seen.add(sid)
        ids.append(sid)
    return ids


def _unused(sid: str, seen: set[str]) -> str:
    """``sid``, or the first of ``sid#1``, ``sid#2``, ... that is not in ``seen``."""
    candidate, k = sid, 0
    while candidate in seen:
        k += 1
        candidate = f"{sid}#{k}"
    return candidate


def prediction_record(pred: str, sample: Mapping, index: int, sid: str) -> dict:
    """One output line: LongBench's four keys, then ``_id`` and ``index``."""
    return {"pred": pred, "answers": sample["answers"], "all_classes": sample["all_classes"],
            "length": sample["length"], "_id": sid, "index": index}


def shard_indices(n: int, rank: int, world: int) -> range:
    """Dataset indices of process ``rank`` among ``world``: rank, rank + world, rank + 2*world, ...

    Strided rather than contiguous so that each process gets a share of every part of
    the dataset (LongBench sets are not shuffled by length) and they finish together.
    """
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise RunIOError(f"need 0 <= rank < world, got rank={rank!r}, world={world!r}")
    if not (isinstance(n, int) and n >= 0):
        raise RunIOError(f"need a sample count n >= 0, got {n!r}")
    return range(rank, n, world)


def final_path(out_dir: Path | str, dataset: str) -> Path:
    return Path(out_dir) / f"{dataset}.jsonl"


def parts_dir(out_dir: Path | str, dataset: str) -> Path:
    return Path(out_dir) / f"{dataset}.parts"


def part_path(out_dir: Path | str, dataset: str, rank: int, world: int) -> Path:
    return parts_dir(out_dir, dataset) / f"part-{rank}-of-{world}.jsonl"


def part_paths(out_dir: Path | str, dataset: str) -> list[Path]:
    """Every part file of ``dataset``, whatever number of processes wrote it."""
    return sorted(parts_dir(out_dir, dataset).glob("part-*.jsonl"))


def _parse(raw: bytes) -> dict | str:
    """The record on one line, or what is wrong with the line."""
    try:
        rec = json.loads(raw)
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except ValueError:
        return "not valid JSON"
    if (isinstance(rec, dict) and isinstance(rec.get("_id"), str)
            and isinstance(rec.get("index"), int) and not isinstance(rec["index"], bool)):
        return rec
    return "not a prediction record (no string _id and integer index)"


def _scan(path: Path) -> tuple[list[bytes], list[dict], int, int]:
    """Complete lines of ``path``, their records, the byte offset where they end, the file size.

    A last line without newline or not a valid record is a write cut short and is left out;
    a bad line with lines after it is real damage and raises.
    """
    data = path.read_bytes()
    lines, records, end = [], [], 0
    while (nl := data.find(b"\n", end)) >= 0:
        rec = _parse(data[end:nl + 1])
        if isinstance(rec, str):
            if data.find(b"\n", nl + 1) >= 0:
                raise RunIOError(f"{path}: line {len(lines) + 1} is {rec}, and lines follow it, so it is not an "
                                 "interrupted write; fix or delete that line (or the file), or pass --overwrite")
            break
        lines.append(data[end:nl + 1])
        records.append(rec)
        end = nl + 1
    return lines, records, end, len(data)


def repair(path: Path | str) -> int:
    """Cut an incomplete last line (left by a killed writer) off ``path``; return the bytes cut."""
    path = Path(path)
    _, _, end, size = _scan(path)
    if end < size:
        log.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run", path, size - end)
        fd = open_no_link(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)
    return size - end


def done_ids(paths: Iterable[Path | str]) -> set[str]:
    """Ids with a complete line in any of ``paths``; missing files count as empty. Read only."""
    done: set[str] = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            done.update(rec["_id"] for rec in _scan(Path(path))[1])
    return done


def check_predictions(paths: Iterable[Path | str], ids: Sequence[str] | None = None) -> None:
    """Raise RunIOError if a line inside one of ``paths`` is damaged, or if a prediction's
    ``_id`` is not the id ``ids`` (the dataset's) has at its ``index``. Read only."""
    for path in map(Path, paths):
        try:
            records = _scan(path)[1]
        except FileNotFoundError:
            continue
        for k, rec in enumerate(records, 1):
            index = rec["index"]
            if ids is not None and index < len(ids) and ids[index] != rec["_id"]:
                raise RunIOError(f"{path}: line {k} predicts {rec['_id']!r} at index {index}, but the data has "
                                 f"{ids[index]!r} there: the dataset changed since; pass --overwrite or use "
                                 "another --save")


def open_locked(path: Path | str, flags: int) -> int | None:
    """Open ``path`` (creating it, and its folder) under an exclusive ``flock``; None if another process holds it.

    The kernel releases the lock when its holder closes the file or dies, even by SIGKILL.
    A holder may delete the file before it closes it: a process that locked the deleted
    file meanwhile sees that the path no longer leads to it, and tries again. A symbolic
    link at ``path`` is refused (``link_error``), never followed.
    """
    path = Path(path)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = open_no_link(path, flags | os.O_CREAT)
        except FileNotFoundError:  # the folder was removed after the mkdir: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
        except BaseException as err:
            os.close(fd)
            if isinstance(err, BlockingIOError):
                return None
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


def _lock(fd: int, path: Path) -> None:
    """Take the one-writer lock of a part file (released by the kernel even on SIGKILL)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunIOError(_busy(path)) from None


def _busy(path: Path) -> str:
    """The message for a part file that another process holds."""
    return (f"{path} is held by another process: run one pred.py per --save, model and dataset, "
            "and merge only after every process has closed its writer (barrier)")


class PredictionWriter:
    """Crash-safe appender to this process's part file. Use as a context manager.

    On entry it locks the part file, cuts off an incomplete last line, and sets ``done``:
    the ids predicted in the final file or in any part file, whatever number of
    processes wrote them. ``write`` adds to ``done``. On exit a part file that holds no
    prediction is deleted, so that no empty part file is left behind. A symbolic link
    as the parts folder or the part file is refused.
    """

    def __init__(self, out_dir: Path | str, dataset: str, rank: int = 0, world: int = 1):
        shard_indices(0, rank, world)  # validates rank and world
        self.out_dir, self.dataset = Path(out_dir), dataset
        self.path = part_path(out_dir, dataset, rank, world)
        self.done: set[str] = set()
        self._fd: int | None = None
        self._size = 0

    def __enter__(self) -> PredictionWriter:
        refuse_links([self.path.parent])
        fd = open_locked(self.path, os.O_WRONLY | os.O_APPEND)
        if fd is None:
            raise RunIOError(_busy(self.path))
        try:
            _fsync_dir(self.path.parent)
            repair(self.path)
            self.done = done_ids([final_path(self.out_dir, self.dataset), *part_paths(self.out_dir, self.dataset)])
            self._size = os.fstat(fd).st_size
        except BaseException:
            self._close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._close(fd)

    def _close(self, fd: int) -> None:
        """Close ``fd``, deleting the part file (and its folder) first if it is empty. Raises nothing."""
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size == 0:
                self.path.unlink()
                with contextlib.suppress(OSError):  # not empty: other parts
                    self.path.parent.rmdir()
        os.close(fd)

    def write(self, record: Mapping) -> None:
        """Append ``record`` (see ``prediction_record``) as one line: one write, then fsync.

        If the write or the fsync fails (a full disk), the file is cut back to its size
        before the call and the error raised names the file.
        """
        if self._fd is None:
            raise RunIOError("PredictionWriter.write called outside its `with` block")
        missing = [k for k in (*LONGBENCH_KEYS, "_id", "index") if k not in record]
        if missing:
            raise RunIOError(f"record lacks {missing}; build it with prediction_record()")
        sid, index = record["_id"], record["index"]
        if not isinstance(sid, str) or not isinstance(index, int) or isinstance(index, bool):
            raise RunIOError(f"record needs a str _id and an int index, got {sid!r} and {index!r}")
        if sid in self.done:
            raise RunIOError(f"sample {sid!r} (index {index}) is already predicted; skip the ids in writer.done")
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            _name(err, self.path)
            raise
        self._size += len(line)
        self.done.add(sid)


def merge_parts(final: Path | str, parts: Sequence[Path | str]) -> int:
    """Merge ``parts`` and the existing ``final`` file into ``final``; return its line count.

    Lines are copied byte for byte, deduplicated by ``_id`` (first copy wins: the final
    file, then ``parts`` in order) and sorted by ``index``, so the result does not depend on
    how many processes wrote them. The final file is replaced atomically, then the parts
    are deleted. Call it on one process after every writer has closed (a barrier): a part
    still locked by a writer raises RunIOError, and so does a symbolic link as a part or
    its folder.
    """
    final, parts = Path(final), [Path(p) for p in parts]
    refuse_links({part.parent for part in parts})
    by_id: dict[str, tuple[int, bytes]] = {}
    id_at: dict[int, str] = {}
    with contextlib.ExitStack() as stack:
        for part in parts:  # hold every part's lock, so no writer starts or runs during the merge
            try:
                fd = open_no_link(part, os.O_RDONLY)
            except FileNotFoundError:  # an empty part its writer deleted
                continue
            stack.callback(os.close, fd)
            _lock(fd, part)
        for path in [final, *parts]:
            try:
                lines, records, end, size = _scan(path)
            except FileNotFoundError:
                continue
            if end < size:
                log.warning("%s: ignoring an incomplete last line (%d bytes)", path, size - end)
            for raw, rec in zip(lines, records):
                sid, index = rec["_id"], rec["index"]
                held, seen_at = id_at.setdefault(index, sid), by_id.setdefault(sid, (index, raw))[0]
                if held != sid or seen_at != index:
                    clash = f"index {index} holds {held!r}" if held != sid else f"{sid!r} is at index {seen_at}"
                    raise RunIOError(f"{path}: {sid!r} at index {index}, but an earlier line says {clash}: "
                                     "the dataset changed between runs; pass --overwrite or use another --save")
        atomic_write_bytes(final, b"".join(raw for _, raw in sorted(by_id.values())))
        for part in parts:
            part.unlink(missing_ok=True)
    for folder in {part.parent for part in parts}:
        with contextlib.suppress(OSError):  # not empty: someone else's files, leave them
            folder.rmdir()
    return len(by_id)


def remove_predictions(out_dir: Path | str, dataset: str) -> list[Path]:
    """Delete the final file and every part file of ``dataset``; return what was deleted."""
    refuse_links([parts_dir(out_dir, dataset)])  # else its glob would delete files of the link's target
    removed = [p for p in [final_path(out_dir, dataset), *part_paths(out_dir, dataset)] if p.exists()]
    for path in removed:
        path.unlink()
    with contextlib.suppress(OSError):
        parts_dir(out_dir, dataset).rmdir()
    return removed
