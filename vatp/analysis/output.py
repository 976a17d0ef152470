"""Whole-file, link-safe writes for the analysis tools' outputs (tables, JSON, figures).

Each file is written to a private temp file and renamed over its path
(:func:`~vatp.longbench.prediction_files.atomic_write_bytes`): a reader, or a kill,
sees the old file or the new one, never half of one, and a symbolic link planted at
the path is replaced, never followed, so a shared output folder cannot make a tool
overwrite a file elsewhere.
"""
from __future__ import annotations

import io
from pathlib import Path

from ..longbench.prediction_files import atomic_write_bytes


def write_text_file(path: Path | str, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8), whole."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: Path | str, dpi: int = 100) -> None:
    """Replace ``path`` by matplotlib figure ``fig`` rendered as PNG, whole."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
