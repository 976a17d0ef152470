"""KNorm: keep the keys with the lowest L2 norm; no attention is read.

Devoto, Zhao, Scardapane, Minervini, "A Simple and Effective L2 Norm-Based
Strategy for KV Cache Compression", EMNLP 2024: keys with a low L2 norm tend
to draw high attention, so a key's score is minus its norm (keys as cached,
after RoPE, per KV head). As kvpress's ``KnormPress``, it compresses the
prompt once, keeping its ``2 * int(ratio * L)`` best tokens (the total of the
other methods, no recent window); new tokens are all kept. Its scores are all
negative: pruned tokens must never come back for it (they score -inf). VATP's
product with a value norm would rank a larger value *lower*, and key norms do
not compare across heads, so VATP and AdaKV refuse it.
"""
from dataclasses import dataclass

import torch

from ..policy import Budget
from .base import Method, Prompt, Scores


@dataclass(frozen=True)
class KNorm(Method):
    name = "knorm"
    scores = Scores.SIGNED  # minus a norm, not attention: VATP and AdaKV do not apply

    def prompt_scores(self, prompt: Prompt):
        return -torch.linalg.vector_norm(prompt.key[0], dim=-1, dtype=torch.float32).to(prompt.score_dtype)

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        return Budget(heavy=2 * int(ratio * prompt_len), recent=0)


METHOD = KNorm
