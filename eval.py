"""Score a model's LongBench predictions, as LongBench's eval.py does.

    python eval.py --model llama2-7b-chat-4k --save pred_out [--e]

Reads every SAVE/MODEL/*.jsonl written by pred.py, writes SAVE/MODEL/result.json
(dataset -> score, or -> {"0-4k", "4-8k", "8k+"} with --e) and prints a table.
The scoring itself lives in vatp/longbench/metrics.py, the file handling in
vatp/longbench/evaluate.py. A problem is one ``eval.py: error:`` line, exit
status 2, with result.json left as it was; Ctrl-C exits 130.
"""

import argparse
import sys
from pathlib import Path

from vatp.longbench.evaluate import (RESULT_NAME, EvalError, evaluate, format_table, run_notes, unmerged_datasets,
                                     write_results)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Score LongBench predictions (SAVE/MODEL/{dataset}.jsonl) with LongBench's metrics "
        "and write SAVE/MODEL/result.json.")
    parser.add_argument("--model", required=True,
                        help="model name: the sub-folder of --save holding the prediction files")
    parser.add_argument("--save", required=True, type=Path,
                        help="the folder pred.py wrote to (its --save); predictions are read from SAVE/MODEL/*.jsonl")
    parser.add_argument("--e", action="store_true",
                        help="LongBench-E: score each dataset per context-length bucket (0-4k, 4-8k, 8k+, "
                        "from each line's \"length\"); an empty bucket is null")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return score(args)
    except KeyboardInterrupt:
        print(f"eval.py: interrupted; {args.save / args.model / RESULT_NAME} is left as it was", file=sys.stderr)
        return 130


def score(args) -> int:
    """Score, warn, write result.json and print the table: 0, or 2 with one ``eval.py: error:`` line."""
    model_dir = args.save / args.model
    try:
        rows = evaluate(model_dir, longbench_e=args.e)
    except EvalError as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    for dataset in unmerged_datasets(model_dir):
        print(f"eval.py: warning: {dataset} has unmerged part files in {model_dir / (dataset + '.parts')}; "
              "its predictions may be incomplete: let pred.py finish (or re-run it) so it merges them.",
              file=sys.stderr)
    for note in run_notes(model_dir, rows, args.e):
        print(f"eval.py: warning: {note}", file=sys.stderr)
    try:
        out = write_results(model_dir, rows)
    except OSError as err:
        print(f"eval.py: error: cannot write {model_dir / RESULT_NAME}: {err.strerror or err}; it is left as it was: "
              "check the folder's permissions and free space, then run eval.py again.", file=sys.stderr)
        return 2
    print(format_table(rows, longbench_e=args.e))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
