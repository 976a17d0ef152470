"""offline_count: count the unique paragraphs among repeated ones.

Mirrors LongBench's passage_count: "Paragraph 1: ...", "Paragraph 2: ...",
where some prose passages of the language reference occur more than once,
scattered through the context. The answer is the number of distinct
passages, as a string. Passages are distinct strings by construction
(sources.passages), so the count is exact.
"""

import random

from . import sources
from .record import labelled_paragraphs, make_record, target_chars

DATASET = "offline_count"
# Chance that the next slot repeats an earlier passage instead of a new one.
REPEAT_PROBABILITY = 0.35


def generate(rng: random.Random, tokens: int) -> dict:
    """One counting record of about `tokens` tokens."""
    pool = list(sources.passages())
    rng.shuffle(pool)
    budget = target_chars(tokens)
    slots, fresh, total = [], 0, 0  # fresh: index of the next unused passage in pool
    while True:
        if slots and (fresh == len(pool) or rng.random() < REPEAT_PROBABILITY):
            text = slots[rng.randrange(len(slots))]
        else:
            text = pool[fresh]
            fresh += 1
        cost = len(text) + len("Paragraph 000: \n\n")
        if total + cost > budget and len(slots) >= 2:
            break
        slots.append(text)
        total += cost
    unique = len(dict.fromkeys(slots))
    return make_record(DATASET, labelled_paragraphs(slots), "", [str(unique)])
