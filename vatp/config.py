"""VatpConfig: the settings of one pruning run, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from . import adakv
from .methods import Method, ValueAware, get_method
from .names import BACKENDS, COMPILE_MODES, METHODS, SCORE_DTYPES, SCORINGS, check_choice


@dataclass(frozen=True)
class VatpConfig:
    """How to prune the KV cache.

    heavy_ratio: budget ratio r in (0, 1]. H2O keeps int(r*L) heavy + int(r*L)
        recent tokens of an L-token prompt (a 2r budget, as in the paper's code).
    method: a name in :data:`vatp.names.METHODS` ("h2o" or "scissorhands", which the
        paper's ``--h2o`` flag picks between, "streaming", "snapkv", "tova", "knorm",
        "criticalkv", "pyramidkv"), or a :class:`~vatp.methods.Method` of your own.
    apval: VATP: weight the method's scores by value L1 norms and protect the sinks
        (for methods whose scores are attention; others refuse it).
    adakv: AdaKV's head-adaptive budgets: each layer's heavy budget is spread over
        its KV heads by score, the same total (:mod:`vatp.adakv`; for methods whose
        scores are attention, which compare across heads; others refuse it).
    sink_len: leading tokens always kept (with apval, as in the paper, and streaming;
        other methods ignore it, as the paper's code does without ``--apval``).
    value_norm, epsilon, two_stage: options of VATP (with apval; the paper's by default):
        the value term ("l1", "l2", "wo_l1"), the score ``(s + epsilon) * norm``, and the
        share of the budget kept by the method's score alone
        (:class:`~vatp.methods.ValueAware`).
    backend: "mask" (faithful: pruned tokens masked, cache keeps them) or
        "evict" (pruned tokens removed from the cache; same outputs).
    scoring: "eager" (L x L probabilities, the paper's way), "chunked"
        (eager's arithmetic in chunks of query rows), "window" (the model's own
        SDPA for every query, eager's probabilities for the method's window of
        last queries only; chunked for a method that scores every query) or "fused" (SDPA output
        and row log-sum-exp + a Triton column-sum kernel; CUDA, needs triton).
        None: eager for the mask backend, chunked for evict.
    chunk_size: query rows per chunk for chunked scoring.
    score_dtype: "model" (the paper's arithmetic: probabilities rounded to
        the model dtype before they are summed, scores accumulated in it) or
        "float32". None: "model", except float32 for bfloat16 models, where
        a decode step's increment of ~1/L vanishes (1.0 + 2.5e-4 == 1.0).
    compile: a ``torch.compile`` mode ("default", "reduce-overhead" for CUDA
        graphs, "max-autotune") for vatp's decode step of each layer, compiled
        with ``fullgraph=True``; None: eager.
    """

    heavy_ratio: float = 0.1
    method: str | Method = "h2o"
    apval: bool = False
    adakv: bool = False
    sink_len: int = 0
    backend: str = "mask"
    scoring: str | None = None
    chunk_size: int = 512
    score_dtype: str | None = None
    compile: str | None = None
    value_norm: str = "l1"
    epsilon: float = 0.0
    two_stage: float = 0.0

    def __post_init__(self):
        for name, kinds in (("heavy_ratio", (int, float)), ("sink_len", int), ("chunk_size", int), ("apval", bool),
                            ("adakv", bool)):
            value = getattr(self, name)
            if not isinstance(value, kinds) or (kinds is not bool and isinstance(value, bool)):
                raise ValueError(f"{name} must be {'a number' if name == 'heavy_ratio' else kinds.__name__}, "
                                 f"got {value!r}")
        if not 0.0 < self.heavy_ratio <= 1.0:
            raise ValueError(f"heavy_ratio must be in (0, 1], got {self.heavy_ratio}; 0.25 gives the paper's 50% budget")
        if not isinstance(self.method, Method):
            check_choice("method", self.method, METHODS)
        if self.sink_len < 0:
            raise ValueError(f"sink_len must be >= 0, got {self.sink_len}")
        check_choice("backend", self.backend, BACKENDS)
        if self.scoring is not None:
            check_choice("scoring", self.scoring, SCORINGS)
        if self.score_dtype is not None:
            check_choice("score_dtype", self.score_dtype, SCORE_DTYPES)
        if self.compile is not None:
            check_choice("compile mode", self.compile, COMPILE_MODES)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not self.apval and (self.value_norm, self.epsilon, self.two_stage) != ("l1", 0.0, 0.0):
            raise ValueError("value_norm, epsilon and two_stage are options of VATP's value weighting; add "
                             "apval=True, or leave them out")
        scorer = self.scorer  # VATP refuses a method whose scores are not attention (and checks its options)
        if self.adakv:
            adakv.check_applies(scorer)

    @property
    def resolved_scoring(self) -> str:
        return self.scoring or ("eager" if self.backend == "mask" else "chunked")

    def budget(self, prompt_len: int):
        """The :class:`~vatp.policy.Budget` for a prompt of this length, or a BudgetError that says how to fix it."""
        return self.scorer.checked_budget(prompt_len, self.heavy_ratio, self.sinks)

    @cached_property
    def scorer(self) -> Method:
        """The method that scores tokens: ``method``, wrapped by VATP's value weighting if ``apval``."""
        method = self.method if isinstance(self.method, Method) else get_method(self.method)
        if not self.apval:
            return method
        return ValueAware(method, value_norm=self.value_norm, epsilon=self.epsilon, two_stage=self.two_stage)

    @property
    def sinks(self) -> int:
        """The leading tokens always kept: ``sink_len`` where the method protects sinks (VATP, StreamingLLM), else 0."""
        return self.sink_len if self.scorer.protects_sinks else 0

    def score_dtype_name(self, model_dtype: torch.dtype) -> str:
        """``score_dtype`` for a model of ``model_dtype``: "model", or "float32" (the default for bfloat16)."""
        return self.score_dtype or ("float32" if model_dtype == torch.bfloat16 else "model")

    def resolved_score_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype scores are computed and accumulated in, for a model of ``model_dtype``."""
        return model_dtype if self.score_dtype_name(model_dtype) == "model" else torch.float32
