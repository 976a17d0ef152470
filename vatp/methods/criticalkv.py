"""CriticalKV over SnapKV's scores: attention weighted by what a token's value adds to the layer's output.

Feng, Lv, Cao, Xie, Zhou, "Identify Critical KV Cache in LLM Inference from an
Output Perturbation Perspective", 2025; kvpress's ``CriticalKVPress`` wrapped
around SnapKV, the pairing that scored best of kvpress's presses on identical
prompts. Two stages, over SnapKV's window scores ``s`` (this project's SnapKV,
``snapkv.py``, the mean over the window's queries): the best ``first_stage``
share of the budget is kept by ``s`` alone (equal scores to the older token);
the rest of the heavy budget goes to the best ``(s + epsilon) * ||W_o v||_1``,
where ``W_o v`` is the token's value projected through the query head's slice
of the output matrix ``o_proj``, its L1 norm averaged over the heads of the
GQA group. The prompt is compressed once; new tokens are all kept.

How it differs from VATP: VATP multiplies by ``||v||_1``, the value vector as
cached, before the output projection, at prefill and at every decode step;
CriticalKV measures the value after ``W_o``, i.e. the perturbation a token can
cause in the layer's output, and spends half the budget on the attention
score alone. Both can be combined (``--method criticalkv --apval``). It is also VATP's modifier with
``value_norm="wo_l1"``, ``epsilon`` = 1e-4 per window query and ``two_stage`` 0.5 on SnapKV
(:class:`~.value_aware.ValueAware`), which tests/test_value_terms.py checks.
"""
from dataclasses import dataclass

import torch

from ..policy import first_stage
from ..value_terms import output_weight, projected_l1
from .base import Prompt
from .snapkv import SnapKV


@dataclass(frozen=True)
class CriticalKV(SnapKV):
    name = "criticalkv"
    epsilon: float = 1e-4
    first_stage: float = 0.5  # of the budget, kept by the attention score alone (the window included)

    def prompt_scores(self, prompt: Prompt):
        scores = super().prompt_scores(prompt)  # (kv_heads, L): attention summed over the window's queries
        chosen = first_stage(scores, prompt.budget, self.first_stage)  # the window is the budget's recent part
        # epsilon is added to the window's mean attention, as kvpress's CriticalKVPress adds it
        values = prompt.value[0]  # (kv_heads, L, dv)
        norms = projected_l1(values, output_weight(prompt.module, values.shape[0], values.shape[2])).to(scores.dtype)
        scores = (scores / min(self.window, scores.shape[1]) + self.epsilon) * norms
        return scores.scatter_(-1, chosen, torch.finfo(scores.dtype).max)


METHOD = CriticalKV
