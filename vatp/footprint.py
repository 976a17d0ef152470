"""Whether eager scoring fits, estimated from a model's config before the model is loaded.

Eager scoring (the paper's way) holds one layer's (heads, L, L) logits and
probabilities at once: a 32k-token prompt on a 28-head model needs over
100 GB for them. pred.py asks :func:`choose_scoring` before loading and
falls back to chunked scoring (the same arithmetic in query chunks) when
eager would not fit in the device's free memory.
"""
from __future__ import annotations

import os

import torch


def eager_scoring_bytes(heads: int, length: int, itemsize: int) -> int:
    """Peak extra memory of eager scoring for one layer: model-dtype logits and probabilities, float32 softmax."""
    return heads * length * length * (2 * itemsize + 4)


def _head_shape(config) -> tuple[int, int]:
    """(head_dim, kv_heads) of a Llama-family config; MHA when it names no KV heads."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return head_dim, getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def weight_bytes(config, itemsize: int) -> int:
    """A Llama-family model's weights: embeddings, attention, gated MLP and norms of every layer."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim, kv_heads = _head_shape(config)
    attention = hidden * head_dim * (2 * config.num_attention_heads + 2 * kv_heads)
    mlp = 3 * hidden * config.intermediate_size
    embeddings = config.vocab_size * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return itemsize * (embeddings + layers * (attention + mlp + 2 * hidden))


def kv_cache_bytes(config, length: int, itemsize: int) -> int:
    """The full KV cache of one ``length``-token sequence."""
    head_dim, kv_heads = _head_shape(config)
    return 2 * config.num_hidden_layers * kv_heads * head_dim * length * itemsize


def free_bytes(device: str) -> int:
    """Memory free on ``device`` now: the GPU's, or the machine's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_scoring(config, longest: int, dtype: torch.dtype, free: int, batch: int = 1,
                   samples: int | None = None) -> tuple[str, str | None]:
    """Eager scoring if it fits in ``free`` bytes beside the weights and the caches of a batch, else chunked.

    A batch holds ``batch`` prompts, or all ``samples`` where there are fewer (so that a larger
    ``--batch_size`` than the data has changes nothing, and a resumed run keeps its scoring).
    Its prompts are scored one at a time, so only the cache grows with the batch.
    Returns the scoring and, when it falls back, the one-line reason.
    """
    rows = batch if samples is None else min(batch, samples)
    itemsize = torch.finfo(dtype).bits // 8
    needed = eager_scoring_bytes(config.num_attention_heads, longest, itemsize)
    left = free - weight_bytes(config, itemsize) - rows * kv_cache_bytes(config, longest, itemsize)
    if needed <= left:
        return "eager", None
    return "chunked", (f"eager scoring of the longest prompt ({longest} tokens) needs {needed / 2**30:.1f} GiB, "
                       f"more than the {max(left, 0) / 2**30:.1f} GiB left beside the model; using chunked scoring "
                       "(the same arithmetic, in query chunks; --scoring eager forces eager)")
