"""The haystack, keys and values shared by the RULER-style tasks.

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?") hides short statements, the needles, at
random depths of long filler text, the haystack. Here the haystack is the
prose of the Python language reference (sources.passages), consecutive
passages from a random start, so it reads like RULER's essay haystack and
ships with Python. Needles go between two sentences, anywhere in it. RULER's
other haystack, "noise" (a few plain sentences repeated), is the Zen of
Python's aphorisms over and over (`noise`).

Keys are RULER's "word" keys (an adjective and a noun joined by a hyphen);
values are random numbers of a fixed number of digits. No key occurs in the
reference text, and each task states its needles in a fixed sentence form,
so the needles of a context can be found again by pattern (the tests do).
"""

import itertools
import random
import uuid

from . import sources
from .record import target_chars

# Longer "sentences" are bullet lists and tables run together; one of them could
# also leave a small context far short of its size, as the filling stops there.
MAX_SENTENCE_CHARS = 400

ADJECTIVES = (
    "amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly",
    "keen", "lively", "misty", "noble", "odd", "proud", "quiet", "rusty", "silent", "tidy",
    "upbeat", "vivid", "wary", "young", "zesty", "bitter", "clever", "dizzy", "frosty", "grumpy",
)
NOUNS = (
    "anchor", "beetle", "candle", "donkey", "falcon", "garden", "harbor", "island", "jacket", "kettle",
    "lemon", "meadow", "needle", "orchid", "pebble", "quilt", "rabbit", "saddle", "tulip", "umbrella",
    "violin", "walnut", "yacht", "zebra", "bucket", "cactus", "dragon", "ferret", "glacier", "hammock",
)


def keys(rng: random.Random, n: int) -> list[str]:
    """`n` distinct keys such as "misty-falcon"."""
    pairs = rng.sample([(a, b) for a in ADJECTIVES for b in NOUNS], n)
    return [f"{a}-{b}" for a, b in pairs]


def numbers(rng: random.Random, n: int, digits: int) -> list[str]:
    """`n` distinct random numbers of exactly `digits` digits."""
    return [str(v) for v in rng.sample(range(10 ** (digits - 1), 10 ** digits), n)]


def uuids(rng: random.Random, n: int) -> list[str]:
    """`n` random version-4 UUIDs (distinct: 122 random bits each)."""
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def filler(rng: random.Random, budget: int) -> list[list[str]]:
    """Consecutive reference passages from a random one (wrapping), split into sentences.

    Returns paragraphs as lists of sentences, at most `budget` characters
    once joined by `plant` (at least one sentence, however small the budget).
    Sentences over MAX_SENTENCE_CHARS are left out.
    """
    pool = sources.passages()
    start = rng.randrange(len(pool))
    # Twice round at most: a budget larger than the reference repeats it.
    rounds = ([s for s in sources.sentences(pool[(start + i) % len(pool)]) if len(s) <= MAX_SENTENCE_CHARS]
              for i in range(len(pool) * 2))
    return _pack(rounds, budget)


def noise(budget: int) -> list[list[str]]:
    """The Zen of Python's aphorisms over and over, one paragraph per round, in at most `budget` characters.

    RULER's "noise" haystack repeats a few plain sentences ("The grass is
    green. The sky is blue. ..."); this one ships with Python.
    """
    return _pack(itertools.repeat(sources.zen()), budget)


def _pack(rounds, budget: int) -> list[list[str]]:
    """Paragraphs, one per round of sentences, until the next sentence would pass `budget` characters
    once joined by `plant` (a space between sentences, a paragraph break between paragraphs)."""
    paragraphs, total = [], 0
    for sentences_of_round in rounds:
        sentences = []
        for sentence in sentences_of_round:
            cost = len(sentence) + (1 if sentences else 2)
            if total + cost > budget and (paragraphs or sentences):
                return paragraphs + [sentences] if sentences else paragraphs
            sentences.append(sentence)
            total += cost
        paragraphs.append(sentences)
    return paragraphs


def plant(rng: random.Random, paragraphs: list[list[str]], needles: list[str]) -> str:
    """The haystack with each needle put between two sentences at a random depth.

    Needles keep their order (the first one is the shallowest), which a
    chain of assignments needs. Returns paragraphs joined by blank lines.
    """
    gaps = [(p, s) for p, sentences in enumerate(paragraphs) for s in range(len(sentences) + 1)]
    chosen = sorted(rng.choice(gaps) for _ in needles)
    out = [list(sentences) for sentences in paragraphs]
    # From the deepest gap up, so that no insertion shifts a later one; needles
    # sharing a gap go in last-first, which leaves them in their order.
    for (p, s), needle in reversed(list(zip(chosen, needles))):
        out[p].insert(s, needle)
    return "\n\n".join(" ".join(sentences) for sentences in out)


def needle(key: str, value: str, kind: str = "numbers") -> str:
    """RULER's needle sentence; `kind` names the values: "numbers" or "uuids"."""
    return f"One of the special magic {kind} for {key} is: {value}."


def haystack_with(rng: random.Random, tokens: int, needles: list[str]) -> str:
    """A haystack of about `tokens` tokens in all, with `needles` planted in their order."""
    paragraphs = filler(rng, target_chars(tokens) - sum(len(n) + 1 for n in needles))
    return plant(rng, paragraphs, needles)
