"""offline_qa_haystack: a question answered by one document among many (RULER's QA).

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), task qa: the context is numbered documents,
"Document 1: ...", one of which answers the question, the others being
distractors (in RULER, the paragraphs of other questions). Here the answering
document is an invented one about a society: who founded it, when, where it
meets, the colour of its flag. DISTRACTORS more societies, described the same
way with their own facts, are the other questions' documents; prose passages
of the language reference fill the rest of the size. The input asks for one
fact of the answering society; the answer is that fact (a name, a year, a
town or a colour), scored by string_match_all: it must be in the prediction.
"""

import random

from . import sources
from .qa import COLORS, FIRST_NAMES, SURNAMES, TOWNS
from .record import make_record, target_chars

DATASET = "offline_qa_haystack"
DISTRACTORS = 2  # 3 calibrated the full cache to 25% at 2,000 tokens; 2 gave 42% (docs/offline_suite.md)
PLACES = ("Ashby", "Brampton", "Carrow", "Dunmore", "Elmstead", "Fernhill", "Glenview", "Holloway",
          "Ivybridge", "Kingsmere", "Larkfield", "Millbrook", "Northwick", "Oakhurst", "Pinecrest", "Redcliff")
KINDS = ("Rowing Club", "Chess Society", "Choir", "Astronomy Society", "Beekeeping Guild", "Cycling Club",
         "Drama Society", "Sailing Club")
# (fact, question about the society named {}); facts are drawn by _facts.
QUESTIONS = (
    ("founder", "Who founded the {}?"),
    ("year", "In which year was the {} founded?"),
    ("town", "In which town does the {} meet?"),
    ("color", "What colour is the flag of the {}?"),
)


def _facts(rng: random.Random) -> dict:
    """The facts of one society."""
    return {"founder": f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}", "year": str(rng.randrange(1750, 1950)),
            "town": rng.choice(TOWNS), "color": rng.choice(COLORS)}


def _document(name: str, facts: dict) -> str:
    return (f"The {name} was founded in {facts['year']} by {facts['founder']}. "
            f"Its members meet in {facts['town']}, and its flag is {facts['color']}.")


def _passages(rng: random.Random, budget: int) -> list[str]:
    """Reference passages in random order, each one that still fits in `budget` characters."""
    pool = list(sources.passages())
    rng.shuffle(pool)
    out, total = [], 0
    for text in pool:
        cost = len(text) + len("Document 000: \n\n")
        if total + cost <= budget:  # a passage too long for what is left is skipped, not the end
            out.append(text)
            total += cost
    return out


def generate(rng: random.Random, tokens: int) -> dict:
    """One haystack-QA record of about `tokens` tokens."""
    names = [f"{place} {kind}" for place, kind in
             rng.sample([(p, k) for p in PLACES for k in KINDS], DISTRACTORS + 1)]
    facts = [_facts(rng) for _ in names]
    societies = [_document(name, f) for name, f in zip(names, facts)]
    fact, question = rng.choice(QUESTIONS)  # about names[0]; the other societies are distractors
    budget = target_chars(tokens) - sum(len(d) + len("Document 000: \n\n") for d in societies)
    documents = _passages(rng, budget)
    for society in societies:
        documents.insert(rng.randrange(len(documents) + 1), society)
    context = "\n\n".join(f"Document {i}: {text}" for i, text in enumerate(documents, 1))
    return make_record(DATASET, context, question.format(names[0]), [facts[0][fact]])
