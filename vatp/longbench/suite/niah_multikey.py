"""offline_niah_multikey: one needle among needles of other keys (RULER's multi-key NIAH).

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), task niah_multikey: several needles "One of
the special magic numbers for {key} is: {value}." with distinct keys and
distinct values are planted at random depths; the input asks for the number
of one key; the others are distractors. The answer is that key's number.
"""

import random

from . import haystack
from .record import make_record

DATASET = "offline_niah_multikey"
DIGITS = 7
KEYS = 4  # the queried key and three distractors, as RULER's niah_multikey_1 (4 keys in all)


def generate(rng: random.Random, tokens: int) -> dict:
    """One multi-key record of about `tokens` tokens."""
    keys = haystack.keys(rng, KEYS)
    values = haystack.numbers(rng, KEYS, DIGITS)
    needles = [haystack.needle(k, v) for k, v in zip(keys, values)]
    rng.shuffle(needles)  # the queried needle (keys[0]) at any rank among the others
    context = haystack.haystack_with(rng, tokens, needles)
    question = f"What is the special magic number for {keys[0]} mentioned in the provided text?"
    return make_record(DATASET, context, question, [values[0]])
