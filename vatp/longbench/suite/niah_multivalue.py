"""offline_niah_multivalue: every value of one key (RULER's multi-value NIAH).

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), task niah_multivalue: several needles "One
of the special magic numbers for {key} is: {value}." share one key and have
distinct values, planted at random depths; the input asks for all of them.
The answer is one string listing every value ("v1, v2, ..."), scored by
string_match_all: the share of the values the prediction contains.
"""

import random

from . import haystack
from .record import make_record

DATASET = "offline_niah_multivalue"
DIGITS = 7
VALUES = 4  # as RULER's niah_multivalue


def generate(rng: random.Random, tokens: int) -> dict:
    """One multi-value record of about `tokens` tokens."""
    key, = haystack.keys(rng, 1)
    values = haystack.numbers(rng, VALUES, DIGITS)
    context = haystack.haystack_with(rng, tokens, [haystack.needle(key, v) for v in values])
    question = f"What are all the special magic numbers for {key} mentioned in the provided text?"
    return make_record(DATASET, context, question, [", ".join(values)])
