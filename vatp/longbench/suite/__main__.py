"""Command line: python -m vatp.longbench.suite --out DIR [--tasks ...] [--samples N] [--tokens ...] [--seed S]."""

import argparse
import json
import sys

from . import DEFAULT_SAMPLES, DEFAULT_TOKENS, KNOWN, TASKS, write_suite
from .record import CHARS_PER_TOKEN


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vatp.longbench.suite",
        description="Write the offline task suite (LongBench jsonl) from text shipped with Python.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tasks", nargs="+", choices=list(KNOWN), default=list(TASKS),
                        help="default: every task but the retired ones (%(default)s)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help="samples per task (default %(default)s)")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS),
                        help=f"context sizes in approximate tokens, 1 token = {CHARS_PER_TOKEN} "
                             "characters (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        paths = write_suite(args.out, args.tasks, args.samples, args.tokens, args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(f"Python {sys.version.split()[0]}, seed {args.seed}, tokens {args.tokens}")
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lengths = [json.loads(line)["length"] for line in f]
        print(f"wrote {path}: {len(lengths)} records, length {min(lengths)}-{max(lengths)} words")


if __name__ == "__main__":
    main()
