"""offline_retrieval: find the paragraph a sentence comes from.

Mirrors LongBench's passage_retrieval_en: the context is "Paragraph 1: ...",
"Paragraph 2: ...", ... made of distinct prose passages of the language
reference, as many as fit the requested size. The input is one sentence
copied verbatim from one paragraph, chosen so that no other paragraph of the
context contains it; the answer is "Paragraph k".
"""

import random

from . import sources
from .record import labelled_paragraphs, make_record, target_chars

DATASET = "offline_retrieval"
# Key sentences this short are often generic; this long, they give the answer away by length.
MIN_KEY_WORDS, MAX_KEY_WORDS = 8, 60


def fill(pool: list[str], budget: int) -> list[str]:
    """The first passages of `pool` that fit in `budget` characters (at least two)."""
    out, total = [], 0
    for text in pool:
        cost = len(text) + len("Paragraph 000: \n\n")
        if total + cost > budget and len(out) >= 2:
            break
        out.append(text)
        total += cost
    return out


def _key_sentence(rng: random.Random, paragraphs: list[str], k: int) -> str | None:
    """A sentence of paragraph k found in no other paragraph, or None."""
    candidates = [s for s in sources.sentences(paragraphs[k])
                  if MIN_KEY_WORDS <= len(s.split()) <= MAX_KEY_WORDS
                  and not any(s in p for j, p in enumerate(paragraphs) if j != k)]
    return rng.choice(candidates) if candidates else None


def generate(rng: random.Random, tokens: int) -> dict:
    """One retrieval record of about `tokens` tokens."""
    pool = list(sources.passages())
    rng.shuffle(pool)
    paragraphs = fill(pool, target_chars(tokens))
    order = list(range(len(paragraphs)))
    rng.shuffle(order)
    for k in order:  # the first paragraph with a usable key sentence is the target
        key = _key_sentence(rng, paragraphs, k)
        if key is not None:
            return make_record(DATASET, labelled_paragraphs(paragraphs), key, [f"Paragraph {k + 1}"])
    raise ValueError(f"no paragraph among {len(paragraphs)} has a sentence unique to it")
