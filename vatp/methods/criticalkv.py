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
score alone. Both can be combined (``--method criticalkv --apval``).
"""
from dataclasses import dataclass

import torch

from ..policy import group_to_kv_heads, rank_key
from .base import Prompt
from .snapkv import SnapKV


@dataclass(frozen=True)
class CriticalKV(SnapKV):
    name = "criticalkv"
    epsilon: float = 1e-4
    first_stage: float = 0.5  # of the budget, kept by the attention score alone (the window included)

    def prompt_scores(self, prompt: Prompt):
        scores = super().prompt_scores(prompt)  # (kv_heads, L): attention summed over the window's queries
        length = scores.shape[1]
        prefix = max(length - self.window, 0)
        first = min(max(int(self.first_stage * prompt.budget.total) - self.window, 0), prefix)
        positions = torch.arange(prefix, device=scores.device)
        chosen = rank_key(scores[:, :prefix], positions).topk(first, dim=-1).indices  # ties to the older token
        # epsilon is added to the window's mean attention, as kvpress's CriticalKVPress adds it
        scores = (scores / min(self.window, length) + self.epsilon) * projected_value_norms(prompt).to(scores.dtype)
        return scores.scatter_(-1, chosen, torch.finfo(scores.dtype).max)


def projected_value_norms(prompt: Prompt) -> torch.Tensor:
    """(kv_heads, L) ``||W_o^h v||_1`` of each token's value, averaged over the query heads h of its GQA group.

    ``W_o^h`` (dv, hidden) is head h's slice of ``o_proj``; one head at a time, so that only one (L, hidden)
    product is alive.
    """
    if prompt.module is None or not hasattr(prompt.module, "o_proj"):
        raise ValueError("criticalkv reads the attention layer's o_proj: call it through the model")
    values = prompt.value[0]  # (kv_heads, L, dv)
    weight = prompt.module.o_proj.weight  # (hidden, heads * dv)
    heads = weight.shape[1] // values.shape[-1]
    group = heads // values.shape[0]
    norms = [torch.linalg.vector_norm(values[h // group] @ weight[:, h * values.shape[-1]:(h + 1) * values.shape[-1]].T,
                                      ord=1, dim=-1, dtype=torch.float32) for h in range(heads)]
    return group_to_kv_heads(torch.stack(norms), values.shape[0])


METHOD = CriticalKV
