"""LongBench's conventions, as LongBench's and the paper's pred.py apply them.

Dataset lists, config and data loading (a local data.zip folder or the hub),
middle truncation, chat prompts, and the generation settings of each dataset.
Importing it does not import torch, so that pred.py can refuse bad flags, configs
and data in a fraction of a second.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

# The paper's code runs these with --e (LongBench-E) ...
LONGBENCH_E = ["qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
               "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p"]
# ... and these without it.
PAPER_PLAIN = ["narrativeqa", "musique", "qmsum"]
# Chat models do better without their chat prompt on these (LongBench); the
# offline suite's few-shot and code tasks mirror trec and lcc.
NO_CHAT = {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p", "offline_code", "offline_classify"}
FIELDS = ("input", "context", "answers", "length", "all_classes")
SEED = 42
# Model dtypes by name; vatp.models maps them to torch dtypes (this module imports no torch).
DTYPE_NAMES = ("bfloat16", "float16", "float32")
# config/ of this repository; the environment variable VATP_CONFIG_DIR points pred.py at another folder.
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"


class DataError(RuntimeError):
    """Data missing or malformed; the message says how to fix it."""


class UsageError(ValueError):
    """A bad flag, config entry or model; the message says how to fix it."""


def config_dir() -> Path:
    return Path(os.environ.get("VATP_CONFIG_DIR") or REPO_CONFIG)


def read_config(name: str, folder: Path | None = None) -> dict:
    """``{folder}/{name}.json`` (default: ``config_dir()``), or a UsageError saying what is wrong with it."""
    path = Path(folder or config_dir()) / f"{name}.json"
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} not found; restore it (git checkout config/) "
                         "or unset VATP_CONFIG_DIR") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"config file {path} is not readable JSON ({err}); fix it") from None
    if not isinstance(value, dict):
        raise UsageError(f"config file {path} must hold a JSON object (name -> value)")
    return value


def resolve_model(name: str, folder: Path | None = None) -> tuple[str, int]:
    """The path (hub id, folder or ``embedded:<package>``) and prompt token limit of model ``name``."""
    folder = Path(folder or config_dir())
    paths, limits = read_config("model2path", folder), read_config("model2maxlen", folder)
    if name not in paths:
        raise UsageError(f"unknown model {name!r}: add it to {folder / 'model2path.json'} and model2maxlen.json, "
                         f"or pick one of: {', '.join(sorted(paths))}")
    if name not in limits:
        raise UsageError(f"model {name!r} has no prompt length in {folder / 'model2maxlen.json'}; add one")
    path = paths[name]
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
        raise UsageError(f"model path {path} of {name!r} does not exist; fix {folder / 'model2path.json'} "
                         "or create that folder")
    return path, int(limits[name])


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The tokenizer of a model path (hub id, folder or ``embedded:<package>``), without the weights."""
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, path, trust_remote_code, "the tokenizer")


def load_model_config(path: str, trust_remote_code: bool = False):
    """The transformers config of a model path, without the weights."""
    from transformers import AutoConfig

    return _load(AutoConfig, path, trust_remote_code, "the config")


def _load(auto, path: str, trust_remote_code: bool, what: str):
    from .models import ModelLoadError, local_source

    try:
        return auto.from_pretrained(local_source(path), trust_remote_code=trust_remote_code)
    except ModelLoadError as err:
        raise UsageError(str(err)) from None
    except (OSError, ValueError) as err:
        if not trust_remote_code and "trust_remote_code" in str(err):
            raise UsageError(f"{path!r} needs code from its own repository to load (the paper's code trusts it "
                             "silently); pass --trust_remote_code if you trust that repository") from None
        raise UsageError(f"could not load {what} of {path!r}: {err}") from None


# The paper runs these models in float16 (its pred.py calls model.half()).
PAPER_FLOAT16 = ("llama2", "vicuna", "longchat")


def default_dtype(model_name: str, model_config) -> str:
    """float16 for the paper's models, as the paper; otherwise the checkpoint's own dtype (float32 if none)."""
    if any(key in model_name for key in PAPER_FLOAT16):
        return "float16"
    name = str(getattr(model_config, "dtype", None) or "").removeprefix("torch.")
    return name if name in DTYPE_NAMES else "float32"


def seed_everything(seed: int = SEED) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_datasets(e: bool) -> list[str]:
    return list(LONGBENCH_E if e else PAPER_PLAIN)


def load_samples(dataset: str, e: bool, data_dir: str | None) -> list[dict]:
    """The test samples of ``dataset`` (``{dataset}_e`` with ``e``), from ``data_dir`` or the hub.

    Each line of a local file is checked by ``_check_sample``; the samples are returned exactly as parsed.
    """
    name = f"{dataset}_e" if e else dataset
    if data_dir is None:
        return _load_from_hub(name)
    path = Path(data_dir) / f"{name}.jsonl"
    if not Path(data_dir).is_dir():
        raise DataError(f"data folder {data_dir} does not exist; unzip LongBench's data.zip there "
                        "(or generate the offline suite: python -m vatp.suite --out DIR)")
    if not path.is_file():
        raise DataError(f"{path} not found; --data_dir must hold {{dataset}}.jsonl and {{dataset}}_e.jsonl files "
                        f"as in LongBench's data.zip (drop --e if you only have {dataset}.jsonl)")
    samples = []
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}:{number}: not UTF-8 (byte 0x{raw[err.start]:02x} at byte "
                                    f"{err.start + 1} of the line); save the file as UTF-8 or fix that line") from None
                if not line.strip():
                    continue
                try:
                    sample = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err.msg}); fix or remove that line") from None
                _check_sample(sample, f"{path}:{number}")
                samples.append(sample)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; check that file") from None
    if not samples:
        raise DataError(f"{path} holds no samples (it is empty or blank); restore it from LongBench's data.zip "
                        "(or python -m vatp.suite --out DIR), or leave this dataset out of --datasets")
    return samples


def _is_number(value) -> bool:
    """A JSON number: int or float, not bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json(value) -> str:
    """``value`` as it reads in JSON, cut to 60 characters, for error messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_sample(sample, where: str) -> None:
    """Raise a DataError, naming ``where`` (path:line) and the fix, unless ``sample`` has LongBench's fields and types.

    ``input`` and ``context`` are strings, ``answers`` a list of strings, ``length`` a non-negative integer
    (a float such as 12.0 passes) and ``all_classes`` null or a list of strings. Numbers among the answers pass
    unchanged: LongBench's pred.py copies answers to the predictions as they are, and its count metric (as
    eval.py, for every metric) reads them as strings.
    """
    missing = [k for k in FIELDS if k not in sample] if isinstance(sample, dict) else list(FIELDS)
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; LongBench lines have {list(FIELDS)}")
    for key in ("input", "context"):
        if not isinstance(sample[key], str):
            raise DataError(f'{where}: "{key}" must be a string, got {_json(sample[key])}; '
                            'write it as a JSON string ("" if there is none)')
    answers = sample["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) or _is_number(a) for a in answers):
        raise DataError(f'{where}: "answers" must be a list of strings, got {_json(answers)}; '
                        'write it as a JSON list such as ["Paris"]')
    length = sample["length"]
    whole = _is_number(length) and (isinstance(length, int) or length.is_integer())
    if not whole or length < 0:
        raise DataError(f'{where}: "length" must be a non-negative integer, got {_json(length)}; '
                        "write the context length in words (LongBench: characters for Chinese), such as 3512")
    classes = sample["all_classes"]
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise DataError(f'{where}: "all_classes" must be null or a list of strings, got {_json(classes)}; '
                        'write null, or the class names as a JSON list such as ["Location", "Human"]')
    if not sample["context"].strip() and not sample["input"].strip():
        raise DataError(f"{where}: empty prompt (both context and input are empty); fix or remove that line")


def _load_from_hub(name: str) -> list[dict]:
    how = ("download LongBench's data.zip (huggingface.co/datasets/THUDM/LongBench, file data.zip), "
           "unzip it and pass --data_dir path/to/data")
    try:
        from datasets import load_dataset

        return list(load_dataset("THUDM/LongBench", name, split="test"))
    except ImportError:
        raise DataError(f"loading {name} from the hub needs the `datasets` package; or {how}") from None
    except Exception as err:  # offline, or a datasets release that no longer runs loading scripts
        raise DataError(f"could not load {name} from the hub ({type(err).__name__}: {err}); {how}") from None


def build_chat(tokenizer, prompt: str, model_name: str) -> str:
    """The chat prompt of LongBench's pred.py, or the tokenizer's own chat template."""
    if "llama2" in model_name:
        return f"[INST]{prompt}[/INST]"
    if "longchat" in model_name or "vicuna" in model_name:  # FastChat's vicuna_v1.1 template
        return ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                f"helpful, detailed, and polite answers to the user's questions. USER: {prompt} ASSISTANT:")
    if "xgen" in model_name:
        return ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                f"helpful, detailed, and polite answers to the human's questions.\n\n ### Human: {prompt}\n###")
    if "internlm" in model_name:
        return f"<|User|>:{prompt}<eoh>\n<|Bot|>:"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def uses_template(tokenizer, model_name: str) -> bool:
    """Whether the chat prompt comes from the tokenizer's template (which carries its own special tokens)."""
    return not any(k in model_name for k in ("llama2", "longchat", "vicuna", "xgen", "internlm")) and bool(
        getattr(tokenizer, "chat_template", None))


def truncate_middle(tokenizer, prompt: str, max_length: int) -> str:
    """Keep the first and last int(max_length/2) tokens (LongBench: instructions sit at both ends)."""
    ids = tokenizer(prompt, truncation=False, return_tensors="pt").input_ids[0]
    if len(ids) <= max_length:
        return prompt
    half = int(max_length / 2)
    return decode(tokenizer, ids[:half]) + decode(tokenizer, ids[-half:])


def decode(tokenizer, ids) -> str:
    """LongBench's ``tokenizer.decode(ids, skip_special_tokens=True)``, the same text without transformers' warning.

    Transformers 5 skips ``clean_up_tokenization_spaces`` for BPE models (unless forced) and, when the tokenizer's
    setting asks for it, logs "Ignoring clean_up_tokenization_spaces=True for BPE tokenizer" on the first decode.
    Passing the clean-up that transformers would really apply keeps the text and the progress bar clean.
    """
    cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if cleanup and type(model).__name__ == "BPE" and not getattr(
            tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False):
        cleanup = False  # what transformers does anyway
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=cleanup)


def encode_prompt(tokenizer, sample: dict, dataset: str, prompt_format: str, model_name: str, max_length: int):
    """Token ids (1, n) of a sample's final prompt: formatted, truncated, chat-wrapped."""
    prompt = truncate_middle(tokenizer, prompt_format.format(**sample), max_length)
    chat = dataset not in NO_CHAT
    if chat:
        prompt = build_chat(tokenizer, prompt, model_name)
    special = not (chat and uses_template(tokenizer, model_name))
    return tokenizer(prompt, truncation=False, return_tensors="pt", add_special_tokens=special).input_ids


def generation_kwargs(tokenizer, dataset: str, max_new_tokens: int, context_length: int) -> dict:
    """Greedy decoding; samsum also stops at a newline and generates at least one token (LongBench)."""
    kwargs = {"max_new_tokens": max_new_tokens, "num_beams": 1, "do_sample": False, "temperature": 1.0,
              "top_p": None, "top_k": None,
              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    if dataset == "samsum":
        kwargs["min_length"] = context_length + 1
        kwargs["eos_token_id"] = [tokenizer.eos_token_id, tokenizer.encode("\n", add_special_tokens=False)[-1]]
    return kwargs


def post_process(response: str, model_name: str) -> str:
    if "xgen" in model_name:
        return response.strip().replace("Assistant:", "")
    if "internlm" in model_name:
        return response.split("<eoa>")[0]
    return response
