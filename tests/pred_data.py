"""Small LongBench-format folders for the pred.py tests: the offline suite plus a hand-made samsum."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"

SHOTS = ("Dialogue: Tom: Are we still on for lunch?\nAnna: Yes, 12:30 at the usual place.\n"
         "Summary: Tom and Anna will have lunch at 12:30.\n\n"
         "Dialogue: Mia: I lost my keys again.\nLeo: Check the kitchen drawer.\n"
         "Summary: Leo tells Mia to look for her keys in the kitchen drawer.\n")


@contextlib.contextmanager
def models_loaded_once():
    """Make pred.py's model load reuse one model per (path, dtype, device) for in-process runs.

    Runs with a ``device_map`` load for real. pred.py disables VATP after each run, so the
    cached model is unchanged between runs. Yields the cache.
    """
    import pytest

    import vatp.longbench.models

    real, cache = vatp.longbench.models.load_model_and_tokenizer, {}

    def load(path, dtype="float32", device="cpu", device_map=None, **kwargs):
        if device_map:
            return real(path, dtype, device, device_map, **kwargs)
        if (path, dtype, device) not in cache:
            cache[path, dtype, device] = real(path, dtype, device)
        return cache[path, dtype, device]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vatp.longbench.models, "load_model_and_tokenizer", load)
        yield cache


def load_pred():
    """The pred.py script as a module, whatever the working directory."""
    if "pred" not in sys.modules:
        spec = importlib.util.spec_from_file_location("pred", REPO / "pred.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["pred"] = module
    return sys.modules["pred"]


def samsum_line(i: int, dialogue: str, summary: str) -> dict:
    """One line in LongBench's own samsum format (data.zip)."""
    return {"input": f"Dialogue: {dialogue}\nSummary: ", "context": SHOTS, "answers": [summary], "length": 60 + i,
            "dataset": "samsum", "language": "en", "all_classes": None, "_id": f"samsum-{i:02d}"}


SAMSUM = [
    samsum_line(0, "Kate: The train is late, I'll be home at 8.\nBen: OK, I'll cook.", "Kate will be home at 8."),
    samsum_line(1, "Sam: Can you send me the report?\nJo: Sent it a minute ago.", "Jo sent Sam the report."),
]
SAMSUM_E = [samsum_line(7, "Ann: Is the shop open on Sunday?\nRob: No, only until Saturday.",
                        "The shop is closed on Sunday.")]


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_data(folder: Path, suite_tasks=("offline_count",)) -> Path:
    from vatp.longbench.suite import write_suite

    write_suite(folder, tasks=list(suite_tasks), samples=2, tokens=(300,))
    write_jsonl(folder / "samsum.jsonl", SAMSUM)
    write_jsonl(folder / "samsum_e.jsonl", SAMSUM_E)
    return folder


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
