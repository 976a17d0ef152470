"""offline_qa: single-document QA on facts planted in the language reference.

The document is a run of consecutive reference blocks (starting at a random
topic, wrapping around), as long as the requested size. A few invented but
plausible statements ("The keeper of the lighthouse is named Ortega.") are
inserted between blocks at random depths; the question asks about one of
them, the others are distractors. Every fact comes from a different template,
so each question has exactly one answer, and answers are one or two words
(the task is scored by qa F1).
"""

import random

from . import sources
from .record import make_record, target_chars

DATASET = "offline_qa"
FACTS_PER_SAMPLE = 4

SURNAMES = ("Ortega", "Lindqvist", "Okafor", "Brennan", "Castellanos", "Haldane",
            "Moreau", "Nakamura", "Petrovic", "Quinlan", "Sorensen", "Varga")
FIRST_NAMES = ("Agnes", "Bartholomew", "Cecilia", "Desmond", "Esther", "Florian",
               "Greta", "Horace", "Imelda", "Jasper", "Leonora", "Matthias")
TOWNS = ("Harwich", "Brindisi", "Tromso", "Galway", "Rostock", "Split",
         "Oban", "Esbjerg", "Cadiz", "Bastia", "Kiel", "Whitby")
ANIMALS = ("badger", "heron", "otter", "lynx", "tortoise", "falcon",
           "hedgehog", "walrus", "pelican", "ferret", "ibex", "marmot")
COLORS = ("crimson", "teal", "ochre", "violet", "olive", "amber",
          "indigo", "maroon", "turquoise", "saffron", "lilac", "cobalt")
WORDS = ("marmalade", "thistle", "quarry", "lantern", "juniper", "compass",
         "saltmarsh", "meridian", "cinnamon", "bramble", "harbour", "gondola")

# (statement with {}, question, function drawing the answer from an rng)
TEMPLATES = (
    ("The archive code of the vault is {}.",
     "What is the archive code of the vault?", lambda r: str(r.randrange(1000, 10000))),
    ("The keeper of the lighthouse is named {}.",
     "What is the name of the keeper of the lighthouse?", lambda r: r.choice(SURNAMES)),
    ("The observatory on the northern ridge was built in {}.",
     "In which year was the observatory on the northern ridge built?", lambda r: str(r.randrange(1720, 1960))),
    ("The ferry to the island departs from {}.",
     "From which town does the ferry to the island depart?", lambda r: r.choice(TOWNS)),
    ("The mascot of the chess club is a {}.",
     "What animal is the mascot of the chess club?", lambda r: r.choice(ANIMALS)),
    ("The front door of the old library is painted {}.",
     "What color is the front door of the old library?", lambda r: r.choice(COLORS)),
    ("The head gardener of the botanical garden is called {}.",
     "What is the head gardener of the botanical garden called?", lambda r: r.choice(FIRST_NAMES)),
    ("The password of the staff wiki is {}.",
     "What is the password of the staff wiki?", lambda r: r.choice(WORDS)),
    ("The bell tower has {} steps.",
     "How many steps does the bell tower have?", lambda r: str(r.randrange(100, 1000))),
    ("The founder of the rowing society was {}.",
     "Who was the founder of the rowing society?", lambda r: r.choice(SURNAMES)),
)


def _document(start: int, budget: int) -> list[str]:
    """Consecutive reference blocks from index `start`, at most `budget` characters.

    Blocks larger than a quarter of the budget are skipped, so one long table
    cannot leave a small context far short of its requested size.
    """
    blocks = sources.topic_blocks()
    out, total = [], 0
    for i in range(len(blocks)):
        block = blocks[(start + i) % len(blocks)][1]
        if len(block) > budget // 4:
            continue
        if total + len(block) + 2 > budget:
            break
        out.append(block)
        total += len(block) + 2
    return out


def generate(rng: random.Random, tokens: int) -> dict:
    """One QA record of about `tokens` tokens."""
    chosen = rng.sample(TEMPLATES, FACTS_PER_SAMPLE)
    values = [draw(rng) for _, _, draw in chosen]
    facts = [statement.format(value) for (statement, _, _), value in zip(chosen, values)]
    depths = [rng.random() for _ in facts]
    start = rng.choice(sources.topic_starts())

    budget = target_chars(tokens) - sum(len(f) + 2 for f in facts)
    blocks = _document(start, budget)
    slots = [round(depth * len(blocks)) for depth in depths]
    # Insert at the deepest slot first so that no insertion shifts another's slot.
    for slot, fact in sorted(zip(slots, facts), reverse=True):
        blocks.insert(slot, fact)
    question = chosen[0][1]
    return make_record(DATASET, "\n\n".join(blocks), question, [values[0]])
