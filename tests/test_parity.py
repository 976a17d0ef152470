"""Reference parity: every case of tests/fixtures/refparity and refparity-fp16 (from ../shared).

Both sets come from the paper's own code, run in float32 and in float16 (the
paper's arithmetic). For each: identical greedy tokens, identical kept-token
masks after every forward, logits to the dtype's rounding and, for the detail
cases, the same accumulated scores and value norms. Each backend runs with its
default scoring (mask: eager; evict: chunked) and must give the same tokens.
"""
import json

import numpy as np
import pytest
import torch

import vatp
from conftest import (NEAR_TIE_SPACINGS, REFPARITY, REFPARITY_FP16, SHARED, boundary_gaps, greedy,
                      recorded_decisions)

# dtype -> (fixture folder, logit tolerance of mask / of evict, score rtol). float32: its rounding.
# float16: mask is the paper's arithmetic (bitwise here); evict's decode softmax sums only the kept
# tokens, in cache order, so its probabilities round differently: up to 0.025 (6 float16 ulps at
# |logit| ~ 6) on these cases, with the same tokens and kept sets.
SETS = {
    "float32": (REFPARITY, {"mask": 1e-4, "evict": 1e-4}, 5e-5),
    "float16": (REFPARITY_FP16, {"mask": 2e-3, "evict": 3e-2}, 2e-3),
}


def _cases():
    found = []
    for name, (folder, *_tols) in SETS.items():
        if (folder / "cases.json").is_file():
            found += [(name, case) for case in json.loads((folder / "cases.json").read_text())["cases"]]
    return found


CASES = _cases()
PRUNED = [(name, case) for name, case in CASES if case["mode"] != "full"]


def _id(item):
    return f"{item[0]}-{item[1]['case_id']}"


def test_reference_fixtures_are_present():
    for name, (folder, *_tols) in SETS.items():
        assert folder.is_dir(), f"{folder} missing: restore tests/fixtures (git checkout tests/fixtures)"
    assert sum(name == "float32" for name, _ in CASES) == 26 and sum(name == "float16" for name, _ in CASES) == 26
    assert sum(case["mode"] == "full" for _, case in CASES) == 4


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared beside the checkout to compare the copy with")
@pytest.mark.parametrize("relative", ["refparity/cases.json", "refparity/refparity.npz",
                                      "refparity/tiny-llama/model.safetensors", "refparity/tiny-llama/config.json",
                                      "refparity-fp16/cases.json", "refparity-fp16/refparity.npz"])
def test_the_fixture_copy_is_the_shared_ground_truth(relative):
    assert (REFPARITY.parent / relative).read_bytes() == (SHARED / relative).read_bytes()


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    return {name: AutoModelForCausalLM.from_pretrained(REFPARITY / "tiny-llama", dtype=getattr(torch, name)).eval()
            for name in SETS}


@pytest.fixture(scope="module")
def arrays():
    return {name: np.load(folder / "refparity.npz") for name, (folder, *_tols) in SETS.items()}


def _run(model, case, backend):
    """Generate as pred.py does; record each forward's state of both layers.

    Full-cache cases run transformers' eager attention, the paper's arithmetic
    (pred.py runs the model's default, SDPA: :func:`test_full_cache_with_sdpa`).
    """
    ids = torch.tensor([case["input_ids"]], device=model.device)
    steps = []
    if case["mode"] == "full":
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            return (*greedy(model, ids), steps)
        finally:
            model.set_attn_implementation(previous)
    vatp.enable(model, heavy_ratio=case["heavy_ratio"], h2o=case["h2o"], apval=case["apval"],
                sink_len=case["sink_len"], backend=backend)
    session = vatp.session_of(model)

    def record(module, args, output):  # each layer's kept tokens, scores and value norms in token order
        steps.append([(s.token_mask() if backend == "mask" else torch.tensor(s.kept_positions()),
                       s.token_values(s.scores, fill=0.0), s.token_values(s.norms) if s.norms is not None else None,
                       s.budgets[0], int(s.cached[0]), len(s.kept_positions()[0]))
                      for s in (session.layers[0], session.layers[1])])

    hook = model.lm_head.register_forward_hook(record)
    try:
        tokens, logits = greedy(model, ids)
    finally:
        hook.remove()
        vatp.disable(model)
    return tokens, logits, steps


def _check_tokens_and_logits(name, case, npz, tokens, logits, backend, tolerance=None):
    assert tokens == case["generated_ids"]
    diff = (logits.float().cpu() - torch.from_numpy(npz[case["logits_key"]])).abs().max().item()
    print(f"{name} {backend} {case['case_id']}: max |logit diff| {diff:.2e}")  # shown with pytest -s
    assert diff < (tolerance or SETS[name][1][backend])


@pytest.mark.parametrize("item", CASES, ids=_id)
def test_mask_backend_matches_reference(models, arrays, item):
    name, case = item
    npz = arrays[name]
    tokens, logits, steps = _run(models[name], case, "mask")
    _check_tokens_and_logits(name, case, npz, tokens, logits, "mask")
    if case["mode"] == "full":
        return
    ref_masks = npz[case["masks_key"]]  # (12, layers, heads, L + 12)
    for s, layers in enumerate(steps):
        for l, (keep, *_rest, budget, _, _) in enumerate(layers):
            kv = keep.shape[1]
            np.testing.assert_array_equal(keep.numpy().astype(np.int8), ref_masks[s, l, :, :kv])
            assert kv == case["prompt_len"] + s + 1
            ref_budget = case["budgets"][l]
            assert (budget.heavy, budget.recent) == (ref_budget["heavy_budget"], ref_budget["recent_budget"])
    if case.get("scores_key"):
        ref_scores, ref_norms = npz[case["scores_key"]], npz[case["value_norm_key"]]  # (4, layers, heads, L + 3)
        rtol = SETS[name][2]
        for s in range(4):
            for l, (_, scores, norms, *_rest) in enumerate(steps[s]):
                kv = scores.shape[1]
                assert scores.dtype == getattr(torch, name)  # the paper's arithmetic
                if case["apval"]:  # value norms are kept only by methods that use them
                    assert norms.dtype == scores.dtype
                    np.testing.assert_allclose(norms.float().numpy(), ref_norms[s, l, :, :kv], rtol=rtol, atol=1e-6)
                else:
                    assert norms is None
                # Rounding of the sums; the kept sets above are what must be exact. Pruned tokens score -inf
                # here (never ranked again), 0 in the paper's code (``scores * mask``).
                ours = scores.float().masked_fill(scores == float("-inf"), 0).numpy()
                np.testing.assert_allclose(ours, ref_scores[s, l, :, :kv], rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("item", [item for item in CASES if item[1]["mode"] == "full"], ids=_id)
def test_full_cache_with_sdpa(models, arrays, item):
    """What pred.py runs for --heavy_ratio 1: same tokens; logits to SDPA's rounding (float16: 8 ulps)."""
    name, case = item
    tokens, logits = greedy(models[name], torch.tensor([case["input_ids"]]))
    assert tokens == case["generated_ids"]
    diff = (logits.float() - torch.from_numpy(arrays[name][case["logits_key"]])).abs().max().item()
    assert diff < {"float32": 1e-4, "float16": 5e-2}[name]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["mask", "evict"])
@pytest.mark.parametrize("item", [item for item in PRUNED if item[0] == "float16"], ids=_id)
def test_float16_parity_on_cuda(models, arrays, item, backend):
    """The float16 set on a GPU, step by step: the paper's tokens, kept sets and logits (to 0.1) up to the
    first difference, if any. The reference ran on a CPU, whose matmuls sum in another order than cuBLAS,
    so a choice that float16 rounding decides may go the other way; the first difference must be one:
    a token whose reference logit lead over ours is at most twice the step's logit difference, or kept
    sets that differ only in KV heads whose budget boundary is a near-tie (:func:`boundary_gaps`).
    After it the two runs hold different caches, and nothing more is compared."""
    import copy

    name, case = item
    with recorded_decisions() as decisions:
        tokens, logits, steps = _run(copy.deepcopy(models[name]).cuda(), case, backend)
    layers = len(steps[0])
    assert len(decisions) == len(steps) * layers  # one decision per layer and forward
    ref_logits, ref_masks = torch.from_numpy(arrays[name][case["logits_key"]]), arrays[name][case["masks_key"]]
    logits = logits.float().cpu()
    for s, (ours, theirs) in enumerate(zip(tokens, case["generated_ids"])):
        delta = (logits[s] - ref_logits[s]).abs().max().item()
        if ours != theirs:
            lead = (ref_logits[s, theirs] - ref_logits[s, ours]).item()
            print(f"{case['case_id']} {backend}: step {s} token {ours} for {theirs}, reference lead {lead:.3g}, "
                  f"logit difference {delta:.3g}")  # shown with pytest -s
            assert lead <= 2 * delta
            return
        assert delta < 0.1
        for l, (kept, *_rest, seen, _) in enumerate(steps[s]):
            kept = kept.cpu().numpy()
            if backend == "mask":
                differ = (kept.astype(np.int8) != ref_masks[s, l, :, :kept.shape[1]]).any(axis=1)
            else:
                differ = np.array([not np.array_equal(row, np.flatnonzero(ref))
                                   for row, ref in zip(kept, ref_masks[s, l, :, :seen])])
            if differ.any():
                gaps = boundary_gaps(*decisions[s * layers + l])[torch.from_numpy(differ)]
                print(f"{case['case_id']} {backend}: step {s} layer {l}, {differ.sum()} heads differ, boundary "
                      f"gaps {gaps.tolist()} float16 spacings")
                assert (gaps <= NEAR_TIE_SPACINGS).all()
                return
    print(f"{case['case_id']} {backend}: equal at every step")


@pytest.mark.parametrize("item", PRUNED, ids=_id)
def test_evict_backend_matches_reference(models, arrays, item):
    name, case = item
    tokens, logits, steps = _run(models[name], case, "evict")
    _check_tokens_and_logits(name, case, arrays[name], tokens, logits, "evict")
    ref_masks = arrays[name][case["masks_key"]]  # (12, layers, heads, L + 12)
    for s, layers in enumerate(steps):
        for l, (positions, *_rest, budget, seen, kept) in enumerate(layers):
            # The cache keeps exactly the budget once the sample outgrew it, and the reference's kept tokens.
            assert kept == min(seen, budget.total)
            assert seen == case["prompt_len"] + s
            kept = torch.from_numpy(ref_masks[s, l, :, :seen]).nonzero()[:, 1].view(positions.shape[0], -1)
            assert torch.equal(positions, kept)
