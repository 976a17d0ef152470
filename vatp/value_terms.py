"""The value terms a score can be weighted by: the value vector's size, or what it adds to the layer's output.

* ``l1``: ``||v||_1``, the value vector as cached (VATP, Guo et al. EMNLP 2024);
* ``l2``: ``||v||_2`` (kvpress's ExpectedAttention weights by it);
* ``wo_l1``: ``||W_o^h v||_1``, the value projected through query head h's slice of the output matrix
  ``o_proj``, averaged over the heads of the KV head's GQA group: the perturbation a token can cause in the
  layer's output (CriticalKV, Feng et al. 2025).

values (..., kv_heads, n, dv) -> (..., kv_heads, n) in float32 (``wo_l1``) or their dtype (``l1``, ``l2``).
"""
from __future__ import annotations

import torch

from .policy import value_l1_norm


def output_weight(module, kv_heads: int, value_dim: int) -> torch.Tensor:
    """(kv_heads, group, dv, hidden): each query head's slice of ``module.o_proj``, transposed, grouped by KV head.
    A view: no copy of the weight."""
    if module is None or not hasattr(module, "o_proj"):
        raise ValueError("the projected value norm reads the attention layer's o_proj: call it through the model")
    weight = module.o_proj.weight  # (hidden, heads * dv)
    group = weight.shape[1] // value_dim // kv_heads
    return weight.view(weight.shape[0], kv_heads, group, value_dim).permute(1, 2, 3, 0)


def projected_l1(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``||W_o^h v||_1`` averaged over each GQA group, in float32: values (..., kv_heads, n, dv), weight from
    :func:`output_weight` -> (..., kv_heads, n).

    One query head at a time for several tokens (a prompt), so that one (n, hidden) product is alive; for a
    decode step's token, one ``bmm`` over the query heads of every row's token, which reads ``o_proj`` in place
    (a broadcast matmul would copy it once per row).
    """
    kv_heads, group, value_dim, hidden = weight.shape
    if values.shape[-2] == 1:  # a decode step: rows (..., kv, 1, dv)
        rows = values.reshape(-1, kv_heads, 1, value_dim).expand(-1, kv_heads, group, value_dim)
        rows = rows.reshape(-1, kv_heads * group, value_dim).transpose(0, 1)  # (heads, N, dv)
        projected = torch.bmm(rows, weight.reshape(kv_heads * group, value_dim, hidden))  # (heads, N, hidden)
        norms = torch.linalg.vector_norm(projected, ord=1, dim=-1, dtype=torch.float32)  # (heads, N)
        return norms.view(kv_heads, group, -1).mean(dim=1).transpose(0, 1).reshape(*values.shape[:-2], 1)
    norms = [torch.linalg.vector_norm(values[..., k, :, :] @ weight[k, g], ord=1, dim=-1, dtype=torch.float32)
             for k in range(kv_heads) for g in range(group)]
    return torch.stack(norms, dim=-2).view(*values.shape[:-3], kv_heads, group, -1).mean(dim=-2)


def value_norms(values: torch.Tensor, kind: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The value term ``kind`` ("l1", "l2", "wo_l1") of each value vector: (..., kv_heads, n, dv) -> (..., kv_heads, n).
    ``weight``: :func:`output_weight`, for ``wo_l1``."""
    if kind == "l1":
        return value_l1_norm(values)
    if kind == "l2":
        return torch.linalg.vector_norm(values, ord=2, dim=-1)
    return projected_l1(values, weight)
