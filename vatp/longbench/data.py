"""LongBench's data conventions, as LongBench's and the paper's pred.py apply them.

Dataset lists, config files, model names, and data loading (a local data.zip
folder or the hub), with each sample checked. Importing it does not import
torch, so that pred.py can refuse bad flags, configs and data in a fraction
of a second.
"""
from __future__ import annotations

import json
import os
import random
import string
from pathlib import Path

from .jsonl import BadLine, read_jsonl

# The paper's code runs these with --e (LongBench-E) ...
LONGBENCH_E = ["qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
               "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p"]
# ... and these without it.
PAPER_PLAIN = ["narrativeqa", "musique", "qmsum"]
# Chat models do better without their chat prompt on these (LongBench); the
# offline suite's few-shot and code tasks mirror trec and lcc.
NO_CHAT = {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p", "offline_code", "offline_classify"}
FIELDS = ("input", "context", "answers", "length", "all_classes")
PROMPT_FIELDS = ("context", "input")  # what a prompt of dataset2prompt.json may fill in, as LongBench's do
SEED = 42
# config/ of this repository; the environment variable VATP_CONFIG_DIR points pred.py at another folder.
REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"


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
    if "chatglm" in name:
        raise UsageError(f"{name}: LongBench builds ChatGLM's prompts with methods of its remote-code tokenizer "
                         "(build_prompt, build_chat_input) that this harness does not implement, and its attention "
                         "bypasses transformers' interface, so vatp cannot prune it; use a Llama-family model")
    path, limit = paths[name], limits[name]
    if not isinstance(path, str) or not path:
        raise UsageError(f"{folder / 'model2path.json'}: {name!r} is {_json(path)}; write the model's hub id or "
                         "folder as a JSON string")
    if not _is_whole(limit) or limit < 2:  # LongBench keeps int(limit/2) tokens at each end: 1 would keep all
        raise UsageError(f"{folder / 'model2maxlen.json'}: {name!r} is {_json(limit)}; write the prompt limit in "
                         "tokens as a whole number >= 2, such as 3500")
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
        raise UsageError(f"model path {path} of {name!r} does not exist; fix {folder / 'model2path.json'} "
                         "or create that folder")
    return path, limit


def dataset_configs(datasets: list[str], folder: Path | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """The prompt template and generation length of each of ``datasets``, checked: a UsageError names the
    file, the dataset and the fix for one that is missing, a template that fills in anything but
    ``PROMPT_FIELDS``, or a length that is not a whole number >= 1."""
    folder = Path(folder or config_dir())
    prompts, max_new = read_config("dataset2prompt", folder), read_config("dataset2maxlen", folder)
    for name in datasets:
        if name not in prompts or name not in max_new:
            raise UsageError(f"dataset {name!r} has no prompt/maxlen in {folder}/dataset2prompt.json "
                             "and dataset2maxlen.json; add them or pick another")
        if problem := _template_problem(prompts[name]):
            raise UsageError(f"{folder / 'dataset2prompt.json'}: {name!r} {problem}")
        if not _is_whole(max_new[name]) or max_new[name] < 1:
            raise UsageError(f"{folder / 'dataset2maxlen.json'}: {name!r} is {_json(max_new[name])}; write the "
                             "number of tokens to generate as a whole number >= 1, such as 128")
    return {name: prompts[name] for name in datasets}, {name: max_new[name] for name in datasets}


def _template_problem(template) -> str | None:
    """What keeps ``template`` from being a prompt that ``str.format(**sample)`` fills; None if nothing."""
    fix = ("a prompt fills in only " + " and ".join(f"{{{f}}}" for f in PROMPT_FIELDS) +
           ", as LongBench's; write a literal brace as {{ or }}")
    if not isinstance(template, str):
        return f"is {_json(template)}, not a string; {fix}"
    try:
        fields = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as err:  # a single { or }
        return f"is not a format string ({err}); {fix}"
    for field, spec, conversion in fields:
        if field not in PROMPT_FIELDS or spec or conversion:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            return f"has the placeholder {{{shown}}}; {fix}"
    return None



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
        for number, sample in read_jsonl(path):
            _check_sample(sample, f"{path}:{number}")
            samples.append(sample)
    except BadLine as bad:
        if bad.not_utf8:
            raise DataError(f"{path}:{bad.number}: not UTF-8 (byte 0x{bad.byte:02x} at byte {bad.offset} of the "
                            "line); save the file as UTF-8 or fix that line") from None
        raise DataError(f"{path}:{bad.number}: not valid JSON ({bad.cause.msg}); fix or remove that line") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; check that file") from None
    if not samples:
        raise DataError(f"{path} holds no samples (it is empty or blank); restore it from LongBench's data.zip "
                        "(or python -m vatp.suite --out DIR), or leave this dataset out of --datasets")
    return samples


def _is_number(value) -> bool:
    """A JSON number: int or float, not bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    """A JSON integer: int, not bool (nor a float such as 3500.0, which would pass on as a float)."""
    return isinstance(value, int) and not isinstance(value, bool)


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


