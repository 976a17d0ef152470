"""vatp.longbench.metrics against LongBench v1's own metrics.py / eval.py.

Every expected value below was computed by running THUDM/LongBench's
`LongBench/metrics.py` and the `scorer` / `scorer_e` of `LongBench/eval.py`
(commit 2e00731) on the same inputs, with rouge 1.0.1, jieba 0.42.1 and
fuzzywuzzy 0.18.0 without python-Levenshtein, then hard-coded here. The
comparisons are exact (==): the arithmetic is the same, so the floats are too.
"""

import json
import random
import subprocess
import sys
import textwrap
import warnings

import pytest

from vatp.longbench import metrics as m

# (metric, prediction, answer, all_classes, LongBench's value)
CASEBOOK = [
    # qa F1: case, punctuation and articles are normalised away; unicode punctuation is not.
    (m.qa_f1_score, "The Eiffel Tower.", "eiffel tower", None, 1.0),
    (m.qa_f1_score, "an apple, a pear and THE banana!", "Apple pear banana", None, 0.8571428571428571),
    (m.qa_f1_score, "", "Paris", None, 0),
    (m.qa_f1_score, "Paris", "", None, 0),
    (m.qa_f1_score, "the", "a", None, 0),
    (m.qa_f1_score, "Paris France Paris", "Paris", None, 0.5),
    (m.qa_f1_score, "Thebes, theatre and anthem", "the Thebes", None, 0.4),
    (m.qa_f1_score, "1,000 people", "1000 people", None, 1.0),
    (m.qa_f1_score, "Café  déjà-vu", "cafe deja vu", None, 0),
    (m.qa_f1_score, "He said \u201cyes\u201d", "yes", None, 0),
    (m.qa_f1_score, "state-of-the-art", "state of the art", None, 0),
    # qa F1 zh: jieba tokens; 》 is in LongBench's punctuation list but 《 is not.
    (m.qa_f1_zh_score, "北京是中国的首都。", "北京", None, 0.33333333333333337),
    (m.qa_f1_zh_score, "《红楼梦》", "红楼梦", None, 0.6666666666666666),
    (m.qa_f1_zh_score, "“北京”，中国！", "北京 中国", None, 1.0),
    (m.qa_f1_zh_score, "", "北京", None, 0),
    (m.qa_f1_zh_score, "。。。", "。", None, 0),
    (m.qa_f1_zh_score, "ABC公司", "abc公司", None, 1.0),
    (m.qa_f1_zh_score, "我爱北京天安门", "天安门在北京", None, 0.5714285714285715),
    # ROUGE-L: case-sensitive; empty sides and very long sentences (RecursionError) score 0.
    (m.rouge_score, "the cat sat on the mat", "the cat is on the mat", None, 0.7999999950000002),
    (m.rouge_score, "", "a summary", None, 0.0),
    (m.rouge_score, "a summary", "", None, 0.0),
    (m.rouge_score, "...", "a summary.", None, 0.0),
    (m.rouge_score, "First sentence. Second one here.", "Second one here. First sentence.", None, 0.999999995),
    (m.rouge_score, "The Cat", "the cat", None, 0.0),
    (m.rouge_score, "word " * 1200, "word " * 1200, None, 0.0),
    # ROUGE-L zh
    (m.rouge_zh_score, "会议讨论了预算问题。", "会议主要讨论了明年的预算问题。", None, 0.7999999952000001),
    (m.rouge_zh_score, "", "会议讨论了预算", None, 0.0),
    (m.rouge_zh_score, "今天天气很好", "今天天气很好", None, 0.999999995),
    (m.rouge_zh_score, "。", "会议", None, 0.0),
    # classification: substrings of the answer are dropped, with LongBench's skip-after-remove.
    (m.classification_score, "Location", "Location", ["Location", "Human", "Entity"], 1.0),
    (m.classification_score, "Human or Location", "Location", ["Location", "Human", "Entity"], 0.5),
    (m.classification_score, "Fast food", "Fast food", ["Food", "Fast food", "Sport"], 1.0),
    (m.classification_score, "Food", "Fast food", ["Food", "Fast food", "Sport"], 0.0),
    (m.classification_score, "Abbreviation", "Abbreviation", ["Abbreviation", "Abbrev", "Ab", "Description"], 0.5),
    (m.classification_score, "Fast food and Sport", "Fast food", ["Food", "Fast food", "Sport"], 0.5),
    (m.classification_score, "", "Location", ["Location", "Human"], 0.0),
    (m.classification_score, "location", "Location", ["Location", "Human"], 0.0),
    (m.classification_score, "Abbreviation", "Abbreviation", ["Ab", "Abbrev", "Abbreviation"], 0.5),
    (m.classification_score, "体育新闻", "体育", ["体育", "新闻", "财经"], 0.5),
    # retrieval: share of the numbers in the prediction equal to the answer's paragraph.
    (m.retrieval_score, "Paragraph 7", "Paragraph 7", None, 1.0),
    (m.retrieval_score, "The answer is Paragraph 7, not Paragraph 3.", "Paragraph 7", None, 0.5),
    (m.retrieval_score, "Paragraph 17", "Paragraph 7", None, 0.0),
    (m.retrieval_score, "I don't know", "Paragraph 7", None, 0.0),
    (m.retrieval_score, "Paragraph 7 and Paragraph 07", "Paragraph 7", None, 0.5),
    (m.retrieval_score, "7 7 7 3", "Paragraph 7", None, 0.75),
    (m.retrieval_zh_score, "段落3", "段落3", None, 1.0),
    (m.retrieval_zh_score, "答案是段落3和段落12", "段落3", None, 0.5),
    (m.retrieval_zh_score, "Paragraph 3", "段落3", None, 1.0),
    (m.retrieval_zh_score, "无", "段落3", None, 0.0),
    # count
    (m.count_score, "12", "12", None, 1.0),
    (m.count_score, "There are 12 unique paragraphs among 30.", "12", None, 0.5),
    (m.count_score, "twelve", "12", None, 0.0),
    (m.count_score, "12, 12 and 5", "12", None, 0.6666666666666666),
    (m.count_score, "3.5", "3", None, 0.5),
    (m.count_score, "012", "12", None, 0.0),
    # code similarity: first line without ` # //, then fuzz.ratio / 100.
    (m.code_sim_score, "    return x + 1", "    return x + 1", None, 1.0),
    (m.code_sim_score, "```python\n    return x + 1\n```", "    return x + 1", None, 1.0),
    (m.code_sim_score, "# add one\n    return x + 1", "    return x + 1", None, 1.0),
    (m.code_sim_score, "\n\n// comment\nint y = x + 1;", "int y = x + 2;", None, 0.93),
    (m.code_sim_score, "# only\n# comments", "x = 1", None, 0.0),
    (m.code_sim_score, "", "", None, 1.0),
    (m.code_sim_score, "", "x = 1", None, 0.0),
    (m.code_sim_score, "x = 1  # inline comment\ny = 2", "y = 2", None, 1.0),
    (m.code_sim_score, "url = 'http://a'\nz", "z", None, 1.0),
    (m.code_sim_score, "print(a)", "print(b)", None, 0.88),
    (m.code_sim_score, "ab", "abc", None, 0.8),
    (m.code_sim_score, "abcd" * 70, "abce" * 70, None, 0.01),  # difflib's autojunk, >200 chars
    (m.code_sim_score, "\n   \nfoo()", "foo()", None, 0.0),  # a blank line counts as the first line
]


@pytest.mark.parametrize("metric, prediction, answer, all_classes, expected", CASEBOOK,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASEBOOK)])
def test_casebook_matches_longbench(metric, prediction, answer, all_classes, expected):
    args = (prediction, answer) if all_classes is None else (prediction, answer, all_classes)
    assert metric(*args) == expected


def test_every_metric_is_in_the_casebook():
    # string_match_all is RULER's, not LongBench's: its hand-computed cases are STRING_MATCH_ALL below.
    assert {case[0] for case in CASEBOOK} | {m.string_match_all_score} == set(m.DATASET2METRIC.values())


def _random_text(rng: random.Random, n: int) -> str:
    alphabet = "ab c.,\n#`/x_()=的了"
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_code_sim_equals_fuzzywuzzy_without_levenshtein():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using slow pure-python SequenceMatcher"
        fuzz = pytest.importorskip("fuzzywuzzy.fuzz")
    rng = random.Random(0)
    pairs = [("", ""), ("", "a"), ("a", ""), ("same", "same"), ("日本語", "日本")]
    for _ in range(2000):
        a = _random_text(rng, rng.choice([0, 1, 4, 30, 250]))
        pairs.append((a, a if rng.random() < 0.1 else _random_text(rng, rng.choice([0, 1, 4, 30, 250]))))
    for a, b in pairs:
        a = m.first_code_line(a)  # a fixed point of the first-line rule: compares the ratio itself
        assert m.code_sim_score(a, b) == fuzz.ratio(a, b) / 100, (a, b)


# (dataset, predictions, answers, all_classes, LongBench scorer's value)
SCORER_CASES = [
    ("triviaqa", ["\n\nParis\nThe capital of France is Paris.", "London\n", "Berlin is"],
     [["Paris"], ["London", "the city of London"], ["Berlin", "berlin germany"]], None, 88.89),
    ("hotpotqa", ["\n\nParis\nThe capital", "yes"], [["Paris"], ["no", "yes"]], None, 83.33),
    ("trec", ["\nHuman\nLocation", "Location\nHuman"], [["Human"], ["Location"]], ["Human", "Location", "Entity"], 100.0),
    ("lsht", ["体育\n财经新闻"], [["体育"]], ["体育", "新闻", "财经"], 100.0),
    ("samsum", ["\nAnna will call Tom.\nThey meet at 5.", ""], [["Anna will call Tom tomorrow."], ["Ok."]], None, 44.44),
    ("multifieldqa_zh", ["北京", "上海市"], [["北京市", "北京"], ["上海"]], None, 50.0),
    ("passage_count", ["5", "There are 5 or 6"], [["5"], ["6"]], None, 75.0),
    ("lcc", ["```\nfoo(1)\n```", "# c\nbar()"], [["foo(1)"], ["bar(2)"]], None, 95.5),
    ("gov_report", ["The report says costs rose.", ""], [["The report finds that costs rose sharply."], ["x"]], None, 33.33),
    ("dureader", ["会议讨论了预算问题。"], [["会议主要讨论了明年的预算问题。", "预算"]], None, 80.0),
    ("narrativeqa", ["He dies.", "anything"], [["He dies", "He is killed"], []], None, 50.0),
]


@pytest.mark.parametrize("dataset, predictions, answers, all_classes, expected", SCORER_CASES,
                         ids=[c[0] for c in SCORER_CASES])
def test_score_dataset_matches_longbench_scorer(dataset, predictions, answers, all_classes, expected):
    assert m.score_dataset(dataset, predictions, answers, all_classes) == expected


def test_score_rounds_100_times_the_total_over_n_as_longbench():
    """LongBench computes round(100 * total / n, 2): 23 of 160 right is exactly 14.375 there and rounds to 14.38;
    100 * (23 / 160) is 14.374999... and would give 14.37."""
    predictions = ["Paragraph 1"] * 23 + ["Paragraph 2"] * 137
    assert m.score_dataset("passage_retrieval_en", predictions, [["Paragraph 1"]] * 160, None) == 14.38


# LongBench's eval.py as a script calls Rouge.get_scores at this depth: <module>, scorer, rouge_score (and
# rouge_zh_score), get_scores, with LongBench's metric functions as they are written.
LONGBENCH_ROUGE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jieba
    from rouge import Rouge

    def rouge_score(prediction, ground_truth, **kwargs):
        rouge = Rouge()
        try:
            scores = rouge.get_scores([prediction], [ground_truth], avg=True)
        except:
            return 0.0
        return scores["rouge-l"]["f"]

    def rouge_zh_score(prediction, ground_truth, **kwargs):
        prediction = " ".join(list(jieba.cut(prediction, cut_all=False)))
        ground_truth = " ".join(list(jieba.cut(ground_truth, cut_all=False)))
        score = rouge_score(prediction, ground_truth)
        return score

    def scorer(metric, predictions, answers):
        scores = []
        for (prediction, ground_truth) in zip(predictions, answers):
            scores.append(metric(prediction, ground_truth))
        return scores

    cases = json.load(open(sys.argv[1]))
    print(json.dumps([scorer(rouge_score, *zip(*cases)), scorer(rouge_zh_score, *zip(*cases))]))
""")


def test_rouge_gives_up_on_long_sentences_exactly_where_longbench_does(tmp_path):
    """rouge's LCS recurses once per word: past the recursion limit LongBench scores 0. Where that happens depends
    on how deep get_scores is called, so a 1000-word reference scores or not as in LongBench's own script."""
    cases = [("shared p1", " ".join(["shared", *(f"w{i}" for i in range(n - 2)), "p1"])) for n in range(980, 998, 2)]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "longbench_rouge.py").write_text(LONGBENCH_ROUGE_SCRIPT)
    done = subprocess.run([sys.executable, "longbench_rouge.py", "cases.json"], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    english, chinese = json.loads(done.stdout)
    assert 0.0 in english and 0.0 < english[0]  # the boundary is inside the range tested
    assert 0.0 in chinese and 0.0 < chinese[0]
    assert [m.rouge_score(p, g) for p, g in cases] == english
    assert [m.rouge_zh_score(p, g) for p, g in cases] == chinese


def test_rouge_does_not_depend_on_the_process_recursion_limit():
    """torch.compile's inductor raises the limit to 2000 for the whole process; LongBench's eval.py runs under
    Python's default. A reference past the default's boundary still scores 0, and the caller's limit is restored."""
    long_reference = " ".join(["shared", *(f"w{i}" for i in range(1200)), "p1"])
    at_default = [m.rouge_score("shared p1", long_reference), m.rouge_score("shared p1", "shared w p1")]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(3000)
    try:
        raised = [m.rouge_score("shared p1", long_reference), m.rouge_score("shared p1", "shared w p1")]
        assert sys.getrecursionlimit() == 3000
    finally:
        sys.setrecursionlimit(limit)
    assert raised == at_default and at_default[0] == 0.0 and at_default[1] == pytest.approx(0.8)


def test_first_line_rule_applies_to_first_line_datasets_only():
    # hotpotqa scores the whole prediction, triviaqa its first line only.
    assert m.score_sample("hotpotqa", "\nParis\nor London", ["Paris"], None) == 0.5
    assert m.score_sample("triviaqa", "\nParis\nor London", ["Paris"], None) == 1.0
    # offline_classify is cut to its first line before classes are matched.
    assert m.score_sample("offline_classify", "\n\njson\nos", ["json"], ["os", "json"]) == 1.0


def test_score_dataset_e_buckets_match_longbench():
    # Lengths on each bucket boundary; LongBench's scorer_e gives the same three values.
    predictions, answers = ["Paris", "no", "Paris", "x"], [["Paris"], ["yes"], ["Paris"], ["Paris"]]
    got = m.score_dataset_e("hotpotqa", predictions, answers, [3999, 4000, 7999, 8000], None)
    assert got == {"0-4k": 100.0, "4-8k": 50.0, "8k+": 0.0}


def test_score_dataset_e_empty_bucket_is_none():
    # LongBench's scorer_e gives NaN for 8k+ here.
    got = m.score_dataset_e("hotpotqa", ["Paris", "no"], [["Paris"], ["yes"]], [10, 5000], None)
    assert got == {"0-4k": 100.0, "4-8k": 0.0, "8k+": None}


def test_datasets_and_first_line_sets():
    longbench = {"narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh", "hotpotqa", "2wikimqa", "musique",
                 "dureader", "gov_report", "qmsum", "multi_news", "vcsum", "trec", "triviaqa", "samsum", "lsht",
                 "passage_count", "passage_retrieval_en", "passage_retrieval_zh", "lcc", "repobench-p"}
    offline = {"offline_qa", "offline_retrieval", "offline_count", "offline_code", "offline_classify",
               "offline_niah_single", "offline_niah_multikey", "offline_niah_multivalue", "offline_vt", "offline_cwe",
               "offline_qa_haystack"}
    assert set(m.DATASET2METRIC) == longbench | offline
    assert m.FIRST_LINE_DATASETS == {"trec", "triviaqa", "samsum", "lsht", "offline_classify"}
    assert m.score_sample("offline_retrieval", "Paragraph 7", ["Paragraph 7"], None) == 1.0


# (prediction, answer listing its items, RULER's string_match_all as computed by hand)
STRING_MATCH_ALL = [
    ("The special magic number for misty-falcon is 4512873.", "4512873", 1.0),
    ("It is **4512873**.", "4512873", 1.0),  # markup is punctuation, dropped
    ("4,512,873", "4512873", 1.0),  # so are thousands separators
    ("45128731", "4512873", 0.0),  # a whole word, not a substring (RULER's substring test would give 1)
    ("4512873 and 9921034", "4512873, 9921034, 1000000, 2000000", 0.5),
    ("9921034, 4512873", "4512873, 9921034", 1.0),  # order is free
    ("4512873 4512873 4512873", "4512873, 9921034", 0.5),  # repeats count once
    ("VAR QWERT and asdfg", "QWERT, ASDFG, ZXCVB", 2 / 3),  # case-insensitive
    ("QWERTY, ASDFGH", "QWERT, ASDFG", 0.0),
    ("Founded by Agnes Ortega in 1850.", "Agnes Ortega", 1.0),  # a multi-word item: its words in a row
    ("Ortega, Agnes", "Agnes Ortega", 0.0),
    ("", "Agnes Ortega", 0.0),
    ("anything", "", 0.0),  # an answer with no item scores nothing
    ("The top words are quarry, lantern and thistle.", "quarry, lantern, thistle", 1.0),
]


@pytest.mark.parametrize("prediction,answer,expected", STRING_MATCH_ALL)
def test_string_match_all_against_hand_computed_cases(prediction, answer, expected):
    assert m.string_match_all_score(prediction, answer) == expected


def test_string_match_all_over_alternative_answers_is_the_best_one():
    # LongBench's best-over-answers makes a one-item answer RULER's string_match_part.
    assert m.score_sample("offline_qa_haystack", "Galway", ["Split", "Galway"], None) == 1.0
    assert m.score_dataset("offline_vt", ["QWERT", "QWERT ASDFG"], [["QWERT, ASDFG"]] * 2, None) == 75.0


def test_unknown_dataset_error_names_it_and_says_how_to_add():
    with pytest.raises(ValueError, match=r"unknown dataset 'my_task'.*DATASET2METRIC in vatp/metrics.py"):
        m.score_dataset("my_task", ["x"], [["x"]], None)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="no predictions"):
        m.score_dataset("hotpotqa", [], [], None)
    with pytest.raises(ValueError, match="no paragraph number"):
        m.retrieval_score("Paragraph 1", "the first one")
    with pytest.raises(ValueError, match="all_classes"):
        m.classification_score("Location", "Location", None)
