"""offline_classify: few-shot classification of stdlib docstrings by module.

Mirrors LongBench's trec: the context holds labelled examples
("Docstring: ...\nModule: math"), the input is one more docstring followed
by "Module:", and the answer is its module; all_classes lists every module.
Labels are right by construction: each item is the first paragraph of the
docstring of a function defined in that module, and texts found under two
modules are left out (sources.docstring_items).

Examples are drawn without replacement from every item but the query; when
a large context needs more examples than there are items, the pool is
reshuffled and drawn again, so examples may then repeat.
"""

import random

from . import sources
from .record import make_record, target_chars

DATASET = "offline_classify"


def _example(text: str, module: str) -> str:
    return f"Docstring: {text}\nModule: {module}"


def generate(rng: random.Random, tokens: int) -> dict:
    """One classification record of about `tokens` tokens."""
    items = list(sources.docstring_items())
    query_module, query_text = items.pop(rng.randrange(len(items)))
    budget = target_chars(tokens)
    examples, total, pool = [], 0, []
    while True:
        if not pool:
            pool = items[:]
            rng.shuffle(pool)
        module, text = pool.pop()
        example = _example(text, module)
        if total + len(example) + 1 > budget and examples:
            break
        examples.append(example)
        total += len(example) + 1
    query = f"Docstring: {query_text}\nModule:"
    return make_record(DATASET, "\n".join(examples), query, [query_module],
                       list(sources.DOC_MODULES))
