"""Every name a user types, defined once: methods, backends, scorings, dtypes, and their labels.

pred.py checks its flags against these before it imports torch, so this module
imports nothing. A method is registered by one line in :data:`METHODS`; its
file is ``vatp/methods/{name}.py``.
"""
from __future__ import annotations

# name -> label. The registry of token-importance methods (loaded by vatp.methods).
METHODS = {
    "h2o": "H2O",
    "scissorhands": "Scissorhands",
    "streaming": "StreamingLLM",
    "snapkv": "SnapKV",
    "tova": "TOVA",
    "knorm": "KNorm",
    "criticalkv": "CriticalKV",
    "pyramidkv": "PyramidKV",
}
# The paper's modifier, applicable to any method: it weights scores by value L1 norms.
VALUE_AWARE = "VATP"
VALUE_NORMS = ("l1", "l2", "wo_l1")  # VATP's value term: ||v||_1 (the paper's), ||v||_2, ||W_o v||_1 (vatp.value_terms)
BACKENDS = ("mask", "evict")  # how a keep decision is applied (vatp.backends)
SCORINGS = ("eager", "chunked", "window", "fused")  # how the prompt's attention is scored (vatp.attention_math, vatp.fused)
SCORE_DTYPES = ("model", "float32")  # the arithmetic of the scores
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile modes of the decode step
DTYPE_NAMES = ("bfloat16", "float16", "float32")  # model dtypes


def paper_method(h2o: bool) -> str:
    """The method the paper's ``--h2o`` flag picks: H2O with it, its Scissorhands variant without."""
    return "h2o" if h2o else "scissorhands"


def method_label(method: str, apval: bool = False) -> str:
    """``"H2O"``, ``"H2O+VATP"``, ...: how reports, progress bars and run records name a method."""
    return METHODS.get(method, method) + (f"+{VALUE_AWARE}" if apval else "")


def value_options(value_norm: str = "l1", epsilon: float = 0.0, two_stage: float = 0.0) -> str:
    """``"[wo_l1, eps=0.01, two-stage 0.5]"`` for VATP's options away from the paper's (``""`` at its own)."""
    options = [value_norm] * (value_norm != "l1") + [f"eps={epsilon:g}"] * bool(epsilon) + [
        f"two-stage {two_stage:g}"] * bool(two_stage)
    return f"[{', '.join(options)}]" if options else ""


def check_choice(kind: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError that lists them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")
    return value
