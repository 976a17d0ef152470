"""Tests of the offline task suite (vatp.longbench.suite): no model, no network.

Each task's answer is checked against the text itself: the planted fact is
in the document, the key sentence is in the named paragraph only, the count
is recounted, the code line is found in the module on disk, and the labels
are checked against the modules' own docstrings.
"""

import collections
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vatp.longbench.suite import KNOWN, RETIRED, TASKS, generate, write_suite
from vatp.longbench.suite import (common_words, haystack, haystack_qa, niah_multikey, niah_multivalue, sources,
                                  variable_tracking)
from vatp.longbench.suite.__main__ import main
from vatp.longbench.suite.record import target_chars

ROOT = Path(__file__).resolve().parents[1]
SAMPLES, TOKENS = 3, (1000, 4000)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _labelled(context, label):
    """{k: text} of a '{label} k: text' context."""
    parts = re.split(rf"\n\n(?={label} \d+: )", context)
    out = {}
    for part in parts:
        number, text = re.match(rf"{label} (\d+): (.*)\Z", part, re.S).groups()
        out[int(number)] = text
    assert sorted(out) == list(range(1, len(parts) + 1))
    return out


def _paragraphs(context):
    return _labelled(context, "Paragraph")


def _documents(context):
    return _labelled(context, "Document")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    return out, write_suite(out, tasks=KNOWN, samples=SAMPLES, tokens=TOKENS, seed=0)


@pytest.fixture(scope="module")
def records(suite):
    out, _ = suite
    return {task: _read(out / f"{task}_e.jsonl") for task in KNOWN}


def test_layout_and_fields(suite):
    out, paths = suite
    assert sorted(p.name for p in paths) == sorted(n for t in KNOWN for n in (f"{t}.jsonl", f"{t}_e.jsonl"))
    for task in KNOWN:
        plain, balanced = _read(out / f"{task}.jsonl"), _read(out / f"{task}_e.jsonl")
        assert len(plain) == SAMPLES and len(balanced) == SAMPLES * len(TOKENS)
        assert all(record in balanced for record in plain)
        for r in balanced:
            assert list(r) == ["input", "context", "answers", "length", "dataset",
                               "language", "all_classes", "_id"]
            assert r["dataset"] == task and r["language"] == "en"
            assert r["answers"] and all(isinstance(a, str) and a for a in r["answers"])
            assert r["length"] == len(r["context"].split())
            assert re.fullmatch(r"[0-9a-f]{48}", r["_id"])
        assert len({r["_id"] for r in balanced}) == len(balanced)


def test_same_seed_same_bytes_other_seed_differs(suite, tmp_path):
    out, paths = suite
    again = write_suite(tmp_path / "again", tasks=KNOWN, samples=SAMPLES, tokens=TOKENS, seed=0)
    other = write_suite(tmp_path / "other", tasks=KNOWN, samples=SAMPLES, tokens=TOKENS, seed=1)
    for first, second, third in zip(paths, again, other):
        assert first.read_bytes() == second.read_bytes()
        assert first.read_bytes() != third.read_bytes()


def test_output_does_not_depend_on_hash_seed(suite, tmp_path):
    # A fresh interpreter with another hash seed. The stub parent package
    # skips vatp/__init__.py, which imports torch and is not needed here.
    out, paths = suite
    code = ("import sys, types; pkg = types.ModuleType('vatp'); pkg.__path__ = ['vatp']; "
            "sys.modules['vatp'] = pkg; from vatp.longbench.suite import write_suite; "
            f"write_suite(sys.argv[1], tasks={list(KNOWN)}, samples={SAMPLES}, tokens={list(TOKENS)}, seed=0)")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, check=True)
    for path in paths:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()


def test_qa_answer_is_a_planted_fact(records):
    for r in records["offline_qa"]:
        answer = r["answers"][0]
        assert answer in r["context"] and len(answer.split()) <= 2
        assert r["input"].endswith("?")


def test_retrieval_key_sentence_is_in_the_named_paragraph_only(records):
    for r in records["offline_retrieval"]:
        k = int(re.fullmatch(r"Paragraph (\d+)", r["answers"][0]).group(1))
        paragraphs = _paragraphs(r["context"])
        assert [j for j, text in paragraphs.items() if r["input"] in text] == [k]


def test_count_is_the_number_of_unique_paragraphs(records):
    for r in records["offline_count"]:
        paragraphs = list(_paragraphs(r["context"]).values())
        assert r["answers"] == [str(len(set(paragraphs)))]
        assert len(set(paragraphs)) < len(paragraphs) or len(paragraphs) <= 2  # duplicates present


def test_code_answer_is_the_next_line_of_the_real_source(records):
    for r in records["offline_code"]:
        found = []
        for name in sources.CODE_MODULES:
            source = "".join(sources.module_lines(name))
            at = source.find(r["context"])
            if at >= 0 and (at == 0 or source[at - 1] == "\n"):
                found.append(source[at + len(r["context"]):].split("\n", 1)[0].strip())
        assert r["answers"][0] in found
        assert r["input"] == "" and r["context"].endswith("\n")
        assert not any(mark in r["answers"][0] for mark in ("`", "#", "//"))


def test_classify_labels_are_the_real_modules(records):
    def text_of(module_name):
        """The module's source, or for a built-in module its docstrings, on one line."""
        spec = importlib.util.find_spec(module_name)
        if spec.origin.endswith(".py"):
            return sources.collapse(Path(spec.origin).read_text(encoding="utf-8"))
        module = importlib.import_module(module_name)
        return " ".join(sources.collapse(inspect.getdoc(getattr(module, n)) or "") for n in dir(module))
    corpus = {name: text_of(name) for name in sources.DOC_MODULES}
    items = sources.docstring_items()
    for module, text in items:  # found in its own module, and in no other
        assert [name for name, body in corpus.items() if text in body] == [module]
    classes = list(sources.DOC_MODULES)
    assert not [a for a in classes for b in classes if a != b and a in b]  # metric matches substrings
    for r in records["offline_classify"]:
        assert r["all_classes"] == classes and r["answers"][0] in classes
        lines = (r["context"] + "\n" + r["input"] + " " + r["answers"][0]).split("\n")
        pairs = [(module_line.removeprefix("Module: "), doc_line.removeprefix("Docstring: "))
                 for doc_line, module_line in zip(lines[::2], lines[1::2])]
        assert all(pair in items for pair in pairs)
        assert pairs[-1] not in pairs[:-1]  # the query is not among its own examples


# The RULER-style tasks: each answer is recomputed from the context and the input alone.
NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for ([a-z]+-[a-z]+) is: ([0-9a-f-]+)\.")


def _needles(context):
    """(kind, key, value) of every needle sentence of a context, in order."""
    return NEEDLE.findall(context)


def _asked_key(question):
    return re.search(r" for ([a-z]+-[a-z]+) mentioned in the provided text\?$", question).group(1)


def _items(answer):
    return answer.split(", ")


def test_niah_single_answer_is_the_one_needle(records):
    for r in records["offline_niah_single"]:
        needles = _needles(r["context"])
        assert len(needles) == 1
        kind, key, value = needles[0]
        assert kind == "uuids" and re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", value)
        assert _asked_key(r["input"]) == key and r["answers"] == [value]


def test_niah_multikey_answer_is_the_asked_keys_value_among_others(records):
    for r in records["offline_niah_multikey"]:
        needles = _needles(r["context"])
        keys, values = [k for _, k, _ in needles], [v for _, _, v in needles]
        assert len(needles) == niah_multikey.KEYS and len(set(keys)) == len(keys) and len(set(values)) == len(values)
        asked = _asked_key(r["input"])
        assert r["answers"] == [v for k, v in zip(keys, values) if k == asked]
        assert all(re.fullmatch(r"[1-9]\d{6}", v) for v in values)


def test_niah_multivalue_answer_lists_every_value_of_the_key(records):
    for r in records["offline_niah_multivalue"]:
        needles = _needles(r["context"])
        assert len(needles) == niah_multivalue.VALUES and len({v for _, _, v in needles}) == len(needles)
        assert {k for _, k, _ in needles} == {_asked_key(r["input"])}
        assert sorted(_items(r["answers"][0])) == sorted(v for _, _, v in needles)


def test_needle_keys_do_not_occur_in_the_reference():
    text = "\n".join(sources.passages())
    assert not [f"{a}-{b}" for a in haystack.ADJECTIVES for b in haystack.NOUNS if f"{a}-{b}" in text]


def _resolve(context):
    """{name: value} of every variable, following "VAR A = 123." and "VAR B = VAR A." in text order."""
    values = {}
    for name, source in re.findall(r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+)\.", context):
        assert name not in values  # each name is bound once
        values[name] = values[source[4:]] if source.startswith("VAR ") else source  # KeyError: used before bound
    return values


def test_vt_answer_is_every_variable_holding_the_value(records):
    for r in records["offline_vt"]:
        value = re.fullmatch(r"Find all variables that are assigned the value (\d+) in the text above\.",
                             r["input"]).group(1)
        values = _resolve(r["context"])
        assert sorted(_items(r["answers"][0])) == sorted(n for n, v in values.items() if v == value)
        assert len(values) == variable_tracking.CHAINS * (variable_tracking.HOPS + 1)
        assert len(set(values.values())) == variable_tracking.CHAINS  # other chains hold other values
        reference = "\n".join([*sources.passages(), *sources.zen()])
        assert not any(re.search(rf"\b{name}\b", reference) for name in values)


def test_cwe_answer_is_the_most_frequent_words(records):
    for r in records["offline_cwe"]:
        words = r["context"].split(", ")
        assert all(re.fullmatch(r"[a-z]{4,10}", w) for w in words)
        counts = collections.Counter(words).most_common()
        top = counts[:common_words.COMMON]
        assert top[-1][1] > counts[common_words.COMMON][1]  # strictly more frequent than every other word
        assert sorted(_items(r["answers"][0])) == sorted(w for w, _ in top)
        share = sum(n for _, n in top) / len(words) / common_words.COMMON
        assert abs(share - common_words.COMMON_SHARE) < 0.02


def test_qa_haystack_answer_is_in_the_one_document_about_the_society(records):
    fact_of = {"Who founded the (.+)\\?": "founder", "In which year was the (.+) founded\\?": "year",
               "In which town does the (.+) meet\\?": "town", "What colour is the flag of the (.+)\\?": "color"}
    document = re.compile(r"The (.+?) was founded in (\d{4}) by (\w+ \w+)\. "
                          r"Its members meet in (\w+), and its flag is (\w+)\.")
    for r in records["offline_qa_haystack"]:
        (name, fact), = [(m.group(1), f) for q, f in fact_of.items() if (m := re.fullmatch(q, r["input"]))]
        documents = list(_documents(r["context"]).values())
        societies = [document.fullmatch(d).groups() for d in documents if document.fullmatch(d)]
        assert len(societies) == haystack_qa.DISTRACTORS + 1 and len({s[0] for s in societies}) == len(societies)
        (answering,) = [s for s in societies if s[0] == name]
        assert not [d for d in documents if name in d and not document.fullmatch(d)]  # named nowhere else
        year, founder, town, color = answering[1:]
        assert r["answers"] == [{"founder": founder, "year": year, "town": town, "color": color}[fact]]


@pytest.mark.parametrize("task", list(KNOWN))
def test_lengths_follow_tokens(task, records):
    by_size = {t: [r for r in records[task] if abs(len(r["context"]) - target_chars(t)) <= 0.25 * target_chars(t)]
               for t in TOKENS}
    assert all(len(rs) == SAMPLES for rs in by_size.values())
    assert all(len(r["context"]) <= target_chars(t) for t, rs in by_size.items() for r in rs)
    small, large = (sum(r["length"] for r in by_size[t]) for t in TOKENS)
    assert large > 3 * small


def test_long_sizes_span_longbench_e_buckets():
    for task in KNOWN:
        lengths = [generate(task, 0, t)["length"] for t in (1000, 12000, 24000)]
        assert lengths[0] < 4000 <= lengths[1] < 8000 <= lengths[2], (task, lengths)


def test_config_has_prompt_and_maxlen(records):
    with open(ROOT / "config/dataset2prompt.json", encoding="utf-8") as f:
        prompts = json.load(f)
    with open(ROOT / "config/dataset2maxlen.json", encoding="utf-8") as f:
        maxlen = json.load(f)
    for task in KNOWN:
        assert isinstance(maxlen[task], int) and maxlen[task] > 0
        r = records[task][0]
        prompt = prompts[task].format(**r)
        assert r["context"] in prompt and r["input"] in prompt


def test_default_suite_leaves_the_retired_tasks_out(tmp_path):
    paths = write_suite(tmp_path, samples=1, tokens=[300])
    assert sorted(p.name for p in paths) == sorted(n for t in TASKS for n in (f"{t}.jsonl", f"{t}_e.jsonl"))
    assert set(RETIRED) == {"offline_count", "offline_classify"} and not set(RETIRED) & set(TASKS)


def test_cli_writes_files(tmp_path, capsys):
    main(["--out", str(tmp_path), "--tasks", "offline_count", "--samples", "2", "--tokens", "1000", "2000"])
    assert len(_read(tmp_path / "offline_count.jsonl")) == 2
    assert len(_read(tmp_path / "offline_count_e.jsonl")) == 4
    assert "offline_count_e.jsonl: 4 records" in capsys.readouterr().out


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tasks"):
        write_suite(tmp_path, tasks=["narrativeqa"])
    with pytest.raises(ValueError, match="tokens"):
        write_suite(tmp_path, tokens=[10])


def test_a_task_file_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "data"
    out.mkdir()
    (out / "offline_qa.jsonl").symlink_to(victim)
    write_suite(out, tasks=["offline_qa"], samples=2, tokens=(1000,), seed=0)
    assert victim.read_text() == "keep me\n"
    assert not (out / "offline_qa.jsonl").is_symlink() and len(_read(out / "offline_qa.jsonl")) == 2
    assert sorted(os.listdir(out)) == ["offline_qa.jsonl", "offline_qa_e.jsonl"]
