"""offline_code: next-line completion on standard library source.

Mirrors LongBench's lcc: the context is a run of consecutive lines of one
real module (sources.CODE_MODULES, read from disk) ending right before the
target line, as long as the requested size; the input is empty; the answer
is the target line without its indentation or line ending.

A target line starts with code (no blank line, comment, docstring or line
inside a multi-line string), has at least MIN_TARGET_CHARS characters, and
contains no "`", "#" or "//": the code metric skips prediction lines with
those, so a correct prediction of such a line could never score.
"""

import functools
import random

from . import sources
from .record import make_record, target_chars

DATASET = "offline_code"
MIN_TARGET_CHARS = 10  # so trivial lines such as "else:" or ")" are not targets


@functools.lru_cache(maxsize=None)
def _candidates(name: str) -> tuple[tuple[int, int], ...]:
    """(line index, characters before it) of every usable target line of module `name`."""
    lines = sources.module_lines(name)
    before = [0]
    for line in lines:
        before.append(before[-1] + len(line))
    return tuple((i, before[i]) for i in sources.code_line_starts(name)
                 if len(lines[i].strip()) >= MIN_TARGET_CHARS
                 and not any(mark in lines[i] for mark in ("`", "#", "//")))


def _targets(name: str, budget: int) -> list[int]:
    """Target line indices of module `name` with at least `budget` characters before them."""
    return [i for i, before in _candidates(name) if before >= budget]


def generate(rng: random.Random, tokens: int) -> dict:
    """One completion record of about `tokens` tokens."""
    budget = target_chars(tokens)
    eligible = [name for name in sources.CODE_MODULES if _targets(name, budget)]
    if not eligible:
        raise ValueError(f"no module in sources.CODE_MODULES has {budget} characters of code "
                         f"before a target line; ask for fewer than {tokens} tokens")
    name = rng.choice(eligible)
    lines = sources.module_lines(name)
    target = rng.choice(_targets(name, budget))
    start, size = target, 0
    while start > 0 and size + len(lines[start - 1]) <= budget:
        start -= 1
        size += len(lines[start])
    context = "".join(lines[start:target])
    return make_record(DATASET, context, "", [lines[target].strip()])
