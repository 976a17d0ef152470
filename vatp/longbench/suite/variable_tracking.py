"""offline_vt: follow a chain of variable assignments (RULER's variable tracking).

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), task vt: a chain of statements
"VAR QWERT = 12345." then "VAR ASDFG = VAR QWERT." and so on, each name bound
to the one before, is hidden in the haystack in its order; the input asks for
every variable that holds the first value. The answer lists the chain's names
("QWERT, ASDFG, ..."), scored by string_match_all.

As in RULER's default, there is one chain (CHAINS) and the haystack is
"noise", plain sentences repeated (here the Zen of Python's,
haystack.noise): in the reference prose, whose text is itself about
variables and code, the embedded model found almost no statement (0-25%).
"""

import functools
import random
import re
import string

from . import haystack, sources
from .record import make_record, target_chars

DATASET = "offline_vt"
CHAINS = 1  # RULER's num_chains; more chains interleave with the first, with other values
HOPS = 3  # assignments after the first, so 4 names (RULER's default is 4 hops)
NAME_LETTERS = 5


@functools.lru_cache(maxsize=None)
def _haystack_words() -> frozenset[str]:
    """Upper-case runs of the haystack's text, which a variable name must not be."""
    return frozenset(re.findall(r"[A-Z]+", " ".join(sources.zen())))


def _names(rng: random.Random, n: int) -> list[str]:
    """`n` distinct random upper-case names that are not words of the haystack."""
    names = []
    while len(names) < n:
        name = "".join(rng.choices(string.ascii_uppercase, k=NAME_LETTERS))
        if name not in names and name not in _haystack_words():
            names.append(name)
    return names


def _chain(names: list[str], value: str) -> list[str]:
    """The statements binding every name of `names` to `value`, first to last."""
    return [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]


def _interleave(rng: random.Random, chains: list[list[str]]) -> list[str]:
    """The statements of all chains in one random order that keeps each chain's own order."""
    turns = [c for c, chain in enumerate(chains) for _ in chain]
    rng.shuffle(turns)
    queues = [iter(chain) for chain in chains]
    return [next(queues[c]) for c in turns]


def generate(rng: random.Random, tokens: int) -> dict:
    """One variable-tracking record of about `tokens` tokens."""
    names = _names(rng, CHAINS * (HOPS + 1))
    groups = [names[c * (HOPS + 1):(c + 1) * (HOPS + 1)] for c in range(CHAINS)]
    values = haystack.numbers(rng, CHAINS, 5)  # RULER's values are 5-digit numbers
    statements = _interleave(rng, [_chain(g, v) for g, v in zip(groups, values)])
    budget = target_chars(tokens) - sum(len(s) + 1 for s in statements)
    paragraphs = haystack.noise(budget)
    context = haystack.plant(rng, paragraphs, statements)
    question = f"Find all variables that are assigned the value {values[0]} in the text above."
    return make_record(DATASET, context, question, [", ".join(groups[0])])
