"""LongBench v1 scoring, re-implemented with the same behaviour as
THUDM/LongBench `LongBench/metrics.py` and the scorers of `LongBench/eval.py`.

Every metric takes one prediction and one reference answer and returns a
float in [0, 1]; `score_dataset` / `score_dataset_e` aggregate them the way
LongBench's `scorer` / `scorer_e` do. Quirks of the original are kept on
purpose so that scores stay comparable with published LongBench numbers;
each one is pointed out where it happens.

Code similarity and fuzzywuzzy: LongBench scores code with
`fuzzywuzzy.fuzz.ratio(a, b) / 100` and installs fuzzywuzzy without
python-Levenshtein, in which case fuzzywuzzy falls back to
`difflib.SequenceMatcher(None, a, b)` (default autojunk) and returns
`int(round(100 * ratio))`, after returning 100 for equal strings and 0 when
exactly one is empty (difflib gives the same values there). We verified that
`code_sim_score` equals fuzzywuzzy 0.18.0's `fuzz.ratio / 100` on empty,
identical, unicode, long (>200 chars, where autojunk matters) and thousands of
random strings (tests/test_metrics.py repeats the check when fuzzywuzzy is
installed), so this module uses difflib directly and does not depend on
fuzzywuzzy.
"""

import difflib
import logging
import re
import string
import sys
import threading
from collections import Counter

import jieba
import numpy as np
from rouge import Rouge

# jieba logs its dictionary loading at INFO on first use; keep eval output clean.
jieba.setLogLevel(logging.WARNING)

# LongBench's Chinese punctuation list, character for character (it has 》
# but not 《, and includes the ASCII full stop).
_ZH_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》"
    "「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_EN_PUNCT = frozenset(string.punctuation)
_ZH_PUNCT = frozenset(string.punctuation + _ZH_PUNCTUATION)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop ASCII punctuation, then the
    articles a/an/the, then collapse whitespace (in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _EN_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """Lower case, drop ASCII and Chinese punctuation, remove all whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _ZH_PUNCT)
    return "".join(text.split())


def token_f1(prediction_tokens: list, ground_truth_tokens: list) -> float:
    """Bag-of-tokens F1 between two token lists (0 when nothing overlaps)."""
    num_same = sum((Counter(prediction_tokens) & Counter(ground_truth_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str) -> float:
    """Token F1 after SQuAD normalisation, tokens split on whitespace."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _zh_tokens(text: str) -> list:
    """jieba tokens, each normalised; tokens that normalise to '' are dropped."""
    tokens = (normalize_zh_answer(tok) for tok in jieba.cut(text, cut_all=False))
    return [tok for tok in tokens if tok]


def qa_f1_zh_score(prediction: str, ground_truth: str) -> float:
    """Token F1 over normalised jieba tokens (Chinese QA)."""
    return token_f1(_zh_tokens(prediction), _zh_tokens(ground_truth))


# How deep LongBench's eval.py, run as a script, calls Rouge.get_scores: <module>, scorer, rouge_score,
# get_scores (and rouge_zh_score before rouge_score for the Chinese datasets).
LONGBENCH_ROUGE_DEPTH = {"rouge": 4, "rouge_zh": 5}
# ... under Python's default recursion limit, which eval.py never changes. Other code in a process may raise
# it (torch.compile's inductor sets 2000), so the limit is pinned for each call: the scores never depend on it.
LONGBENCH_RECURSION_LIMIT = 1000


def _depth() -> int:
    """Python frames on this thread's stack, down from the caller's."""
    frame, count = sys._getframe(1), 0
    while frame is not None:
        count, frame = count + 1, frame.f_back
    return count


def _nest(levels: int, fn, *args):
    """fn(*args), called ``levels`` frames deeper than a direct call would be."""
    return fn(*args) if levels == 0 else _nest(levels - 1, fn, *args)


class _AtDepth(threading.Thread):
    """Calls fn(*args) with fn's frame ``depth`` frames from the bottom of a fresh thread's stack."""

    def __init__(self, depth: int, fn, *args):
        super().__init__(name="longbench-rouge")
        self.depth, self.fn, self.args, self.result, self.error = depth, fn, args, None, None

    def run(self):
        levels = self.depth - _depth() - 2  # fn sits below _nest's frames, below this one
        try:
            self.result = self.fn(*self.args) if levels == -1 else _nest(levels, self.fn, *self.args)
        except Exception as err:  # noqa: BLE001 (LongBench's bare except)
            self.error = err


def _rouge_l(prediction: str, ground_truth: str, depth: int) -> float:
    """ROUGE-L F from the `rouge` package, at LongBench's call depth; 0 when it raises.

    It raises on an empty side ("Hypothesis is empty") and with RecursionError
    once a sentence's recursive LCS passes the recursion limit; LongBench scores
    both as 0. Where that limit bites depends on how deep get_scores is called,
    so it is called exactly as deep as in LongBench's eval.py, in a thread of its
    own, under LongBench's recursion limit. Only ROUGE-L is asked for: LongBench
    also computes ROUGE-1/2, which raise exactly when ROUGE-L's emptiness check
    does, so the result is the same.
    """
    call = _AtDepth(depth, Rouge(metrics=["rouge-l"]).get_scores, [prediction], [ground_truth])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(LONGBENCH_RECURSION_LIMIT)
    try:
        call.start()
        call.join()
    finally:
        sys.setrecursionlimit(limit)
    return 0.0 if call.error is not None else call.result[0]["rouge-l"]["f"]


def rouge_score(prediction: str, ground_truth: str) -> float:
    """ROUGE-L F, as LongBench's rouge_score."""
    return _rouge_l(prediction, ground_truth, LONGBENCH_ROUGE_DEPTH["rouge"])


def rouge_zh_score(prediction: str, ground_truth: str) -> float:
    """ROUGE-L F over jieba tokens joined with spaces, as LongBench's rouge_zh_score."""
    return _rouge_l(" ".join(jieba.cut(prediction, cut_all=False)),
                    " ".join(jieba.cut(ground_truth, cut_all=False)), LONGBENCH_ROUGE_DEPTH["rouge_zh"])


def classification_score(prediction: str, ground_truth: str, all_classes: list) -> float:
    """1/k when the answer is among the k class names found in the prediction.

    Class names that occur in the prediction are collected in `all_classes`
    order; those that are a proper substring of the answer are then dropped,
    so "Food" does not count against the answer "Fast food". LongBench drops
    them while iterating over the same list, which skips the element right
    after each removal; the loop below reproduces that exactly.
    """
    if all_classes is None:
        raise ValueError("classification needs all_classes (the list of class names), got null")
    matches = [name for name in all_classes if name in prediction]
    i = 0
    while i < len(matches):
        name = matches[i]
        if name in ground_truth and name != ground_truth:
            matches.remove(name)  # first occurrence; the next one shifts into slot i ...
        i += 1  # ... and is skipped, as a list iterator does
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _share_equal_to(prediction: str, target: str) -> float:
    """Fraction of the integers in the prediction that equal `target` (0 if none)."""
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(number == target for number in numbers) / len(numbers)


def count_score(prediction: str, ground_truth: str) -> float:
    """Fraction of the numbers in the prediction that equal the answer."""
    return _share_equal_to(prediction, str(ground_truth))


def _paragraph_id(ground_truth: str, pattern: str) -> str:
    """The first paragraph number in an answer such as 'Paragraph 7'."""
    found = re.findall(pattern, ground_truth)
    if not found:
        raise ValueError(f"retrieval answer {ground_truth!r} has no paragraph number matching {pattern!r}")
    return found[0]


def retrieval_score(prediction: str, ground_truth: str) -> float:
    """Fraction of the numbers in the prediction equal to the answer's 'Paragraph N'."""
    return _share_equal_to(prediction, _paragraph_id(ground_truth, r"Paragraph (\d+)"))


def retrieval_zh_score(prediction: str, ground_truth: str) -> float:
    """Fraction of the numbers in the prediction equal to the answer's '段落N'."""
    return _share_equal_to(prediction, _paragraph_id(ground_truth, r"段落(\d+)"))


def first_code_line(prediction: str) -> str:
    """First line (after leading newlines) with no '`', '#' or '//'; '' if none."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim_score(prediction: str, ground_truth: str) -> float:
    """fuzzywuzzy-style ratio, difflib based: round(100 * ratio) / 100.

    `round` is Python's (half to even), like fuzzywuzzy's `int(round(x))`.
    """
    matcher = difflib.SequenceMatcher(None, first_code_line(prediction), ground_truth)
    return round(100 * matcher.ratio()) / 100


# Separates the items of a RULER-style answer that lists several ("4512873, 9921034").
ITEM_SEPARATOR = ", "


def _has_run(words: list, run: list) -> bool:
    """Whether `run` occurs as consecutive elements of `words`."""
    return any(words[i:i + len(run)] == run for i in range(len(words) - len(run) + 1))


def string_match_all_score(prediction: str, ground_truth: str) -> float:
    """RULER's string_match_all: the share of the answer's items found in the prediction.

    Not a LongBench metric: RULER's (Hsieh et al., 2024, "RULER: What's the Real
    Context Size of Your Long-Context Language Models?"), for the offline suite's
    RULER-style tasks. The answer is one string that lists its items, joined by
    ITEM_SEPARATOR; a single item is a plain answer. RULER counts an item when it
    is a case-insensitive substring of the prediction; here both sides are first
    normalised as for QA F1 (normalize_answer), and an item counts when its words
    occur as consecutive whole words of the prediction, so "1234" is not found in
    "12345", nor "X1" in "X12". Over LongBench's list of alternative answers
    (score_sample's best), a one-item answer is RULER's string_match_part.
    Precision is not scored, as in RULER: the generation length
    (config/dataset2maxlen.json) bounds how many items a prediction can list.
    """
    items = [normalize_answer(item).split() for item in ground_truth.split(ITEM_SEPARATOR)]
    items = [item for item in items if item]
    if not items:
        return 0.0
    words = normalize_answer(prediction).split()
    return sum(_has_run(words, item) for item in items) / len(items)


DATASET2METRIC = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_count": count_score,
    "passage_retrieval_en": retrieval_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
    # The project's offline suite, scored like its LongBench counterparts.
    "offline_qa": qa_f1_score,
    "offline_retrieval": retrieval_score,
    "offline_count": count_score,
    "offline_code": code_sim_score,
    "offline_classify": classification_score,
    # RULER-style tasks of the offline suite, scored as RULER scores them.
    "offline_niah_single": string_match_all_score,
    "offline_niah_multikey": string_match_all_score,
    "offline_niah_multivalue": string_match_all_score,
    "offline_vt": string_match_all_score,
    "offline_cwe": string_match_all_score,
    "offline_qa_haystack": string_match_all_score,
}

# Datasets whose predictions are cut to their first line before scoring.
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht", "offline_classify"})

BUCKETS = ("0-4k", "4-8k", "8k+")


def metric_for(dataset: str):
    """The metric of a dataset; a ValueError that says how to add one if unknown."""
    try:
        return DATASET2METRIC[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r}: no metric is registered for it. "
            f"Known datasets: {', '.join(DATASET2METRIC)}. To add it, map {dataset!r} to a "
            "metric in DATASET2METRIC in vatp/metrics.py (and add it to FIRST_LINE_DATASETS "
            "if only the first line of each prediction should be scored)."
        ) from None


def score_sample(dataset: str, prediction: str, answers: list, all_classes) -> float:
    """Best score of one prediction over its reference answers (0 if none)."""
    metric = metric_for(dataset)
    if dataset in FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    extra = {"all_classes": all_classes} if metric is classification_score else {}
    best = 0.0
    for answer in answers:
        best = max(best, metric(prediction, answer, **extra))
    return best


def _check_lengths(dataset: str, predictions: list, *others: list) -> None:
    metric_for(dataset)
    if not predictions:
        raise ValueError(f"dataset {dataset!r} has no predictions to score")
    if any(len(other) != len(predictions) for other in others):
        raise ValueError(f"dataset {dataset!r}: predictions and answers/lengths differ in count")


def score_dataset(dataset: str, predictions: list, answers: list, all_classes) -> float:
    """LongBench's `scorer`: round(100 * total / n, 2) of the best-over-answers scores, in that order
    (100 * (total / n) rounds differently at some halves: 23 of 160 right is 14.38, not 14.37)."""
    _check_lengths(dataset, predictions, answers)
    total = 0.0
    for prediction, sample_answers in zip(predictions, answers):
        # Plain left-to-right sum as LongBench does (sum() may compensate on newer Pythons).
        total += score_sample(dataset, prediction, sample_answers, all_classes)
    return round(100 * total / len(predictions), 2)


def length_bucket(length: int) -> str:
    """LongBench-E bucket of a sample from its context length."""
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def score_dataset_e(dataset: str, predictions: list, answers: list, lengths: list, all_classes) -> dict:
    """LongBench's `scorer_e`: the score per length bucket; None for an empty bucket
    (LongBench writes NaN there)."""
    _check_lengths(dataset, predictions, answers, lengths)
    per_bucket = {bucket: [] for bucket in BUCKETS}
    for prediction, sample_answers, length in zip(predictions, answers, lengths):
        per_bucket[length_bucket(length)].append(score_sample(dataset, prediction, sample_answers, all_classes))
    # np.mean (pairwise summation) as LongBench, so the last digit agrees too.
    return {
        bucket: float(round(100 * np.mean(scores), 2)) if scores else None
        for bucket, scores in per_bucket.items()
    }
