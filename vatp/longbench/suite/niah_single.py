"""offline_niah_single: one needle in a haystack (RULER's single NIAH).

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), task niah_single in its uuid variant: one
sentence "One of the special magic uuids for {key} is: {value}." is planted at a random depth of the reference
prose; the input asks for the uuid of that key; the answer is the uuid.
Scored by string_match_all (the uuid must be in the answer).
"""

import random

from . import haystack
from .record import make_record

DATASET = "offline_niah_single"


def generate(rng: random.Random, tokens: int) -> dict:
    """One single-needle record of about `tokens` tokens."""
    key, = haystack.keys(rng, 1)
    value, = haystack.uuids(rng, 1)
    context = haystack.haystack_with(rng, tokens, [haystack.needle(key, value, "uuids")])
    question = f"What is the special magic uuid for {key} mentioned in the provided text?"
    return make_record(DATASET, context, question, [value])
