"""Read a model's LongBench prediction files, score them, write result.json.

Prediction files are `DIR/MODEL/{dataset}.jsonl`, one JSON object per line
with the fields written by pred.py: "pred", "answers", "all_classes" and
"length" (the dataset score ignores extra keys; `sample_scores` identifies
samples by "_id", else "index"); numbers among the answers are read as
strings, as LongBench's count metric does. Anything in the
folder that is not a `.jsonl` file (run records, result.json, logs, the
`{dataset}.parts/` folders of a sharded run) is ignored. Every problem is
raised as `EvalError` with a message that names the file (and line) and says
how to fix it.
"""

import json
import math
from pathlib import Path

from vatp.longbench.jsonl import BadLine, read_jsonl
from vatp.longbench.metrics import BUCKETS, score_dataset, score_dataset_e, score_sample
from vatp.longbench.prediction_files import atomic_write_bytes

RESULT_NAME = "result.json"


class EvalError(Exception):
    """A problem with the prediction files that the user has to fix."""


def prediction_files(model_dir: Path) -> list:
    """The sorted `*.jsonl` files of a model folder; EvalError if there are none."""
    if not model_dir.is_dir():
        raise EvalError(f"{model_dir} does not exist or is not a folder; "
                        "check --save and --model (pred.py writes to SAVE/MODEL/).")
    files = sorted(p for p in model_dir.glob("*.jsonl") if p.is_file())
    if not files:
        raise EvalError(f"{model_dir} has no .jsonl prediction files; run pred.py with the same --model and --save first.")
    return files


def unmerged_datasets(model_dir: Path) -> list:
    """Datasets with part files left in `{dataset}.parts/`: a sharded pred.py run
    that is still going, or crashed before merging; their .jsonl may be incomplete."""
    return sorted(d.name[: -len(".parts")] for d in model_dir.glob("*.parts") if any(d.glob("*.jsonl")))


def run_notes(model_dir: Path, rows: list, longbench_e: bool) -> list:
    """What pred.py's run records say about the scored predictions that the scores alone do not: a run
    cut short by --limit, or predictions made on the other data (LongBench vs LongBench-E)."""
    from vatp.longbench.runs import RunIOError, load_run_record

    notes = []
    for dataset, n, _ in rows:
        try:
            record = load_run_record(model_dir, dataset)
        except RunIOError as err:
            notes.append(f"{dataset}: its run record cannot be read ({err}), so how it was predicted is unknown")
            continue
        if record is None:  # predictions from elsewhere (LongBench's own pred.py, say)
            continue
        session = record["sessions"][-1]
        limit = session.get("args", {}).get("limit")
        if _cut_by_limit(limit, session.get("samples"), n):
            notes.append(f"{dataset}: predicted with --limit {limit}, so its {n} samples are a subset of the "
                         "dataset and its score is not a LongBench score; rerun pred.py without --limit to finish")
        made_e = bool(record["settings"].get("e"))
        if made_e != longbench_e:
            data, flag = ("LongBench-E", "with --e") if made_e else ("LongBench", "without --e")
            notes.append(f"{dataset}: predicted on {data} data; score it {flag}")
    return notes


def _cut_by_limit(limit, samples, n: int) -> bool:
    """Whether ``--limit`` left samples of the dataset out: it is below the dataset's ``samples`` (recorded by
    pred.py), or, in a record older than that, not above the ``n`` predictions it allowed."""
    if not _is_whole(limit):
        return False
    return limit < samples if _is_whole(samples) else limit <= n


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_error(path: Path, lineno: int, problem: str) -> EvalError:
    return EvalError(f"{path}, line {lineno}: {problem}. Each line must be a JSON object "
                     '{"pred": str, "answers": [str, ...], "all_classes": [str, ...] or null, "length": int}; '
                     "fix or delete this line, or re-run pred.py for this dataset.")


def _is_number(value) -> bool:
    """A JSON number: int or float, not bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_record(record, path: Path, lineno: int, need_length: bool) -> dict:
    """`record` with numeric answers as strings (as LongBench's count metric reads them);
    EvalError unless it has the fields (and types) scoring needs."""
    if not isinstance(record, dict):
        raise _field_error(path, lineno, f"expected a JSON object, got {type(record).__name__}")
    required = ("pred", "answers", "all_classes") + (("length",) if need_length else ())
    missing = [key for key in required if key not in record]
    if missing:
        raise _field_error(path, lineno, f"missing field(s) {', '.join(missing)}")
    if not isinstance(record["pred"], str):
        raise _field_error(path, lineno, '"pred" must be a string')
    answers = record["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) or _is_number(a) for a in answers):
        raise _field_error(path, lineno, '"answers" must be a list of strings')
    classes = record["all_classes"]
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise _field_error(path, lineno, '"all_classes" must be null or a list of strings')
    if not isinstance(record.get("_id", ""), str):
        raise _field_error(path, lineno, f'"_id" must be a string (the sample\'s id), got {json.dumps(record["_id"])}')
    if "index" in record and not _is_whole(record["index"]):
        raise _field_error(path, lineno, f'"index" must be an integer (the sample\'s position), '
                           f'got {json.dumps(record["index"])}')
    if need_length:
        length = record["length"]
        if not (_is_number(length) and (isinstance(length, int) or math.isfinite(length)) and length >= 0):
            raise _field_error(path, lineno, '"length" must be a finite number >= 0 (the context length in words), '
                               f"got {json.dumps(length)}")
    return {**record, "answers": [a if isinstance(a, str) else str(a) for a in answers]}


def read_predictions(path: Path, need_length: bool) -> list:
    """The records of one prediction file, in order; blank lines are skipped."""
    records = []
    try:
        for lineno, record in read_jsonl(path):
            records.append(_checked_record(record, path, lineno, need_length))
    except BadLine as bad:
        problem = (f"not UTF-8 (byte 0x{bad.byte:02x} at byte {bad.offset})" if bad.not_utf8
                   else f"not valid JSON ({bad.cause.msg} at column {bad.cause.colno})")
        raise _field_error(path, bad.number, problem) from None
    except OSError as err:
        raise EvalError(f"cannot read {path}: {err.strerror or err}; check the file's permissions.") from None
    if not records:
        raise EvalError(f"{path} has no predictions; delete it or re-run pred.py for this dataset.")
    return records


def score_file(path: Path, longbench_e: bool):
    """(dataset, number of samples, score or bucket dict) for one prediction file."""
    dataset = path.name[: -len(".jsonl")]
    records = read_predictions(path, need_length=longbench_e)
    _refuse_repeats(records, path)
    predictions = [r["pred"] for r in records]
    answers = [r["answers"] for r in records]
    # LongBench takes all_classes from the file's last line (it is the same on every line).
    all_classes = records[-1]["all_classes"]
    try:
        if longbench_e:
            score = score_dataset_e(dataset, predictions, answers, [r["length"] for r in records], all_classes)
        else:
            score = score_dataset(dataset, predictions, answers, all_classes)
    except ValueError as err:
        raise EvalError(f"{path}: {err}") from None
    return dataset, len(records), score


def _refuse_repeats(records: list, path: Path) -> None:
    """A sample predicted twice would count twice in the score (files without ids, such as LongBench's own, pass)."""
    seen = set()
    for record in records:
        sid = record.get("_id")
        if sid is not None and sid in seen:
            raise EvalError(f"{path}: sample {sid!r} is predicted twice; delete one of its lines "
                            "(or re-run pred.py for this dataset).")
        seen.add(sid)


def _sample_id(record: dict, path: Path, position: int):
    """A record's identity: its "_id", else its "index"; EvalError if it has neither."""
    for key in ("_id", "index"):
        if key in record:
            return record[key]
    raise EvalError(f"{path}: prediction {position} has neither \"_id\" nor \"index\", so it cannot be matched "
                    "with the same sample of another run; re-run pred.py, which writes both.")


def sample_scores(path: Path) -> dict:
    """Per-sample scores of one prediction file: sample id ("_id", else "index") -> score.

    A sample's score is its metric's best value over its answers (LongBench's per-sample
    value), times 100. Their mean, rounded to 2 decimals, is the dataset score eval.py
    reports, except where the exact mean lies halfway between two hundredths (such as
    18.125): there LongBench's arithmetic (100 times the total of the [0, 1] values, over
    their count) and this mean may round to different neighbours, 0.01 apart. EvalError
    for a repeated id.
    """
    dataset = path.name[: -len(".jsonl")]
    records = read_predictions(path, need_length=False)
    all_classes = records[-1]["all_classes"]  # as score_file: LongBench reads it from the last line
    scores = {}
    for position, record in enumerate(records, start=1):
        sid = _sample_id(record, path, position)
        if sid in scores:
            raise EvalError(f"{path}: sample {sid!r} is predicted twice; delete one of its lines "
                            "(or re-run pred.py for this dataset).")
        try:
            scores[sid] = 100 * score_sample(dataset, record["pred"], record["answers"], all_classes)
        except ValueError as err:
            raise EvalError(f"{path}: {err}") from None
    return scores


def evaluate(model_dir: Path, longbench_e: bool) -> list:
    """Score every prediction file of a model: a list of (dataset, n, score)."""
    return [score_file(path, longbench_e) for path in prediction_files(model_dir)]


def write_results(model_dir: Path, rows: list) -> Path:
    """Write {dataset: score} to MODEL_DIR/result.json atomically (temp file + rename), with the permissions
    of pred.py's files (0666 less the umask); on failure the old file is left as it was."""
    out = model_dir / RESULT_NAME
    text = json.dumps({dataset: score for dataset, _, score in rows}, ensure_ascii=False, indent=4)
    atomic_write_bytes(out, text.encode("utf-8"))
    return out


def _mean(values: list):
    """Mean of the non-None values, rounded to 2 decimals; None if there are none."""
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 2) if values else None


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(rows: list, longbench_e: bool) -> str:
    """A plain-text table: dataset, samples, score (or one column per bucket), average row.

    The average is the unweighted mean over datasets (over non-empty buckets with --e).
    """
    columns = list(BUCKETS) if longbench_e else ["score"]
    body = [[dataset, str(n)] + ([_cell(score[b]) for b in BUCKETS] if longbench_e else [_cell(score)])
            for dataset, n, score in rows]
    if longbench_e:
        averages = [_mean([score[b] for _, _, score in rows]) for b in BUCKETS]
    else:
        averages = [_mean([score for _, _, score in rows])]
    footer = ["average", str(sum(n for _, n, _ in rows))] + [_cell(a) for a in averages]
    header = ["dataset", "n"] + columns
    widths = [max(len(r[i]) for r in [header, *body, footer]) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, body), rule, fmt(footer)])
