"""Reading JSON Lines files: one JSON value per line, and the number of a line that is not UTF-8 or not JSON.

LongBench's data (:mod:`.data`), the prediction files that eval.py scores (:mod:`.evaluate`) and the
needle test's results (:mod:`vatp.analysis.needle`) are read here; each caller turns a :class:`BadLine`
into its own message, which says how to fix that file.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


class BadLine(ValueError):
    """Line ``number`` (from 1) of a JSONL file is not UTF-8 or not JSON.

    ``cause`` is the ``UnicodeDecodeError`` or ``json.JSONDecodeError``. For a line that is not UTF-8,
    ``byte`` is the first bad byte and ``offset`` its place in the line, from 1; both are None otherwise.
    """

    def __init__(self, number: int, cause: ValueError, raw: bytes):
        super().__init__(f"line {number}: {cause}")
        self.number, self.cause = number, cause
        self.not_utf8 = isinstance(cause, UnicodeDecodeError)
        self.byte = raw[cause.start] if self.not_utf8 else None
        self.offset = cause.start + 1 if self.not_utf8 else None


def read_jsonl(path: Path | str, complete_only: bool = False) -> Iterator[tuple[int, object]]:
    """(line number from 1, parsed value) for each non-blank line of ``path``, in order.

    Raises :class:`BadLine` at the first line that is not UTF-8 or not JSON, and ``OSError`` if the file
    cannot be read. With ``complete_only``, a last line without its newline (a write cut short) is left out.
    A generator, so that a caller's check of line 3 fails before line 5 is read, as it would in a loop.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if complete_only and not raw.endswith(b"\n"):
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise BadLine(number, err, raw) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadLine(number, err, raw) from None
            yield number, value
