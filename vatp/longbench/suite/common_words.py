"""offline_cwe: the most frequent words of a long list (RULER's common words extraction).

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), task cwe: the context is a list of words in
which COMMON words occur many times each and many other words a few times
each (UNCOMMON_REPEATS), in random order, as many as the size allows. The
input asks for the COMMON most frequent words; the answer lists them
("w1, w2, w3"), scored by string_match_all. Words are distinct words of the
language reference.

Two choices differ from RULER. Each common word makes up COMMON_SHARE of the
list at every size (RULER repeats it a fixed number of times, so that longer
lists are harder): the size then changes how far apart the repeats are, not
the task. And the list is comma-separated, not numbered ("1. quarry 2. ..."):
SmolLM2's tokenizer spends a token per digit, so a numbered list has twice as
many tokens as its characters suggest, while a comma-separated one keeps to
the suite's 4 characters per token.
"""

import functools
import random
import re

from . import sources
from .record import make_record, target_chars

DATASET = "offline_cwe"
COMMON = 1
COMMON_SHARE = 0.3
UNCOMMON_REPEATS = 2
SEPARATOR = ", "


@functools.lru_cache(maxsize=None)
def vocabulary() -> tuple[str, ...]:
    """Distinct lower-case words of 4 to 10 letters in the language reference, sorted."""
    return tuple(sorted(set(re.findall(r"\b[a-z]{4,10}\b", " ".join(block for _, block in sources.topic_blocks())))))


def _entries(common: list[str], uncommon: list[str], repeats: int) -> list[str]:
    """The list before shuffling: each uncommon word `repeats` times, each common word
    as often as makes it COMMON_SHARE of the list (and always more often than `repeats`)."""
    rest = len(uncommon) * repeats
    times = max(repeats + 1, round(COMMON_SHARE * rest / (1 - COMMON * COMMON_SHARE)))
    return [w for w in common for _ in range(times)] + [w for w in uncommon for _ in range(repeats)]


def _length(words: list[str]) -> int:
    return sum(map(len, words)) + len(SEPARATOR) * (len(words) - 1)


def _fill(common: list[str], rest: list[str], repeats: int, budget: int) -> list[str] | None:
    """The list with as many words of `rest` as fit in `budget`; None if `rest` runs out first."""
    def fits(n):
        return _length(_entries(common, rest[:n], repeats)) <= budget

    if fits(len(rest)):
        return None
    low, high = 0, len(rest)  # fits(low) (or low == 0) and not fits(high): bisect
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return _entries(common, rest[:low], repeats)


def generate(rng: random.Random, tokens: int) -> dict:
    """One common-words record of about `tokens` tokens."""
    words = list(vocabulary())
    rng.shuffle(words)
    common, rest = words[:COMMON], words[COMMON:]
    # The reference has about 2,300 distinct words, enough for some 12,000 tokens
    # at two repeats each; beyond that the uncommon words repeat more often.
    repeats = UNCOMMON_REPEATS
    while (entries := _fill(common, rest, repeats, target_chars(tokens))) is None:
        repeats += 1
    rng.shuffle(entries)
    question = ("What is the most common word in the above list?" if COMMON == 1
                else f"What are the {COMMON} most common words in the above list?")
    return make_record(DATASET, SEPARATOR.join(entries), question, [", ".join(common)])
