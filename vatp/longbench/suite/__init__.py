"""An offline task suite in LongBench's jsonl format.

Tasks on text that ships with Python (the language reference in
`pydoc_data`, the standard library's source, the Zen of Python), so the
whole pipeline runs without hub access. Three mirror LongBench tasks; six
are RULER's synthetic tasks (Hsieh et al., 2024, "RULER: What's the Real
Context Size of Your Long-Context Language Models?"):

| task                    | mirrors                 | text                          |
| ----------------------- | ----------------------- | ----------------------------- |
| offline_qa              | multifieldqa_en         | reference + planted facts     |
| offline_retrieval       | passage_retrieval_en    | reference passages            |
| offline_code            | lcc                     | stdlib module source          |
| offline_niah_single     | RULER niah_single       | reference + one needle        |
| offline_niah_multikey   | RULER niah_multikey     | reference + needles           |
| offline_niah_multivalue | RULER niah_multivalue   | reference + needles           |
| offline_vt              | RULER vt                | Zen of Python + assignments   |
| offline_cwe             | RULER cwe               | reference words               |
| offline_qa_haystack     | RULER qa                | reference + invented documents |

RETIRED tasks are still written on request (`--tasks`), not by default:
with the embedded model every cache variant scored the same on them
(docs/offline_suite.md says why).

`write_suite` writes `{task}.jsonl` and `{task}_e.jsonl` like LongBench's
data.zip. Output depends only on the seed and the Python version: each
sample draws from its own `random.Random` seeded with a string, which
Python hashes with SHA-512, not with the randomised `hash()`.
"""

import json
import random
from pathlib import Path

from ..prediction_files import atomic_write_bytes
from . import (classify, code_completion, common_words, count, haystack_qa, niah_multikey, niah_multivalue,
               niah_single, qa, retrieval, variable_tracking)

TASKS = {  # the default suite
    qa.DATASET: qa.generate,
    retrieval.DATASET: retrieval.generate,
    code_completion.DATASET: code_completion.generate,
    niah_single.DATASET: niah_single.generate,
    niah_multikey.DATASET: niah_multikey.generate,
    niah_multivalue.DATASET: niah_multivalue.generate,
    variable_tracking.DATASET: variable_tracking.generate,
    common_words.DATASET: common_words.generate,
    haystack_qa.DATASET: haystack_qa.generate,
}
# Constant across every cache variant with the embedded model (the full cache
# included), so out of the default suite; kept while demo.sh and tests/test_pred.py name them.
RETIRED = {
    count.DATASET: count.generate,
    classify.DATASET: classify.generate,
}
KNOWN = {**TASKS, **RETIRED}
DEFAULT_SAMPLES = 20
DEFAULT_TOKENS = (1000, 2000, 4000, 8000)
MIN_TOKENS = 200  # below this a context holds too few paragraphs or examples to mean anything


def generate(task: str, index: int, tokens: int, seed: int = 0) -> dict:
    """Sample `index` of `task` at about `tokens` tokens.

    The random stream depends on (seed, task, index) but not on `tokens`, so
    the same sample at several sizes shares its draws (the question, the
    planted facts, the start of the document) as far as the sizes allow.
    """
    if task not in KNOWN:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(KNOWN)}")
    return KNOWN[task](random.Random(f"{seed}:{task}:{index}"), tokens)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    # whole, by rename: a kill leaves no half-written task file, and a planted link is replaced, not followed
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))


def write_suite(out_dir, tasks=None, samples: int = DEFAULT_SAMPLES,
                tokens=DEFAULT_TOKENS, seed: int = 0) -> list[Path]:
    """Write `{task}.jsonl` and `{task}_e.jsonl` for each task; return the paths.

    `{task}_e.jsonl` holds every sample at every size of `tokens` (grouped by
    size), like LongBench-E's length-balanced sets. `{task}.jsonl` holds each
    sample once, sample i at size tokens[i % len(tokens)], a mixed-length set
    like LongBench's plain ones; its records are also in the `_e` file.
    """
    tasks = list(TASKS) if tasks is None else list(tasks)
    unknown = [task for task in tasks if task not in KNOWN]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {', '.join(KNOWN)}")
    tokens = [int(t) for t in tokens]
    if not tokens or min(tokens) < MIN_TOKENS:
        raise ValueError(f"tokens must be a non-empty list of sizes >= {MIN_TOKENS}, got {tokens}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in tasks:
        grid = {(i, t): generate(task, i, t, seed) for t in tokens for i in range(samples)}
        plain = [grid[i, tokens[i % len(tokens)]] for i in range(samples)]
        balanced = [grid[i, t] for t in tokens for i in range(samples)]
        for name, records in ((f"{task}.jsonl", plain), (f"{task}_e.jsonl", balanced)):
            _write_jsonl(out_dir / name, records)
            paths.append(out_dir / name)
    return paths
