"""Reference parity: every case of ../shared/refparity, produced by the paper's own code.

Identical greedy tokens, logits within 1e-4, identical kept-token masks after
every forward, and (for the detail cases) the same accumulated scores and
value norms. The evict backend must give the same tokens and logits.
"""
import numpy as np
import pytest
import torch

import vatp
from conftest import greedy

TOL = 1e-4


def _cases():
    import json

    from conftest import REFPARITY
    return json.loads((REFPARITY / "cases.json").read_text())["cases"] if REFPARITY.is_dir() else []


CASES = _cases()


def test_reference_fixtures_are_present():
    from conftest import REFPARITY
    assert REFPARITY.is_dir(), f"{REFPARITY} missing: set VATP_SHARED to the shared/ folder"
    assert len(CASES) == 26 and sum(c["mode"] == "full" for c in CASES) == 2


def _run(model, case, backend):
    """Generate as pred.py does; record each forward's masks and detail arrays (mask backend)."""
    ids = torch.tensor([case["input_ids"]])
    steps = []
    if case["mode"] == "full":
        return (*greedy(model, ids), steps)
    vatp.enable(model, heavy_ratio=case["heavy_ratio"], h2o=case["h2o"], apval=case["apval"],
                sink_len=case["sink_len"], backend=backend)
    session = vatp.session_of(model)

    def record(module, args, output):
        steps.append([(s.keep, s.scores.clone(), s.value_norms.clone(), s.budget, s.seen,
                       s.scores.shape[1]) for s in (session.layers[0], session.layers[1])])

    hook = model.lm_head.register_forward_hook(record)
    try:
        tokens, logits = greedy(model, ids)
    finally:
        hook.remove()
        vatp.disable(model)
    return tokens, logits, steps


@pytest.mark.parametrize("case", CASES, ids=[c["case_id"] for c in CASES])
def test_mask_backend_matches_reference(parity_model, refparity, case):
    _, npz = refparity
    tokens, logits, steps = _run(parity_model, case, "mask")
    assert tokens == case["generated_ids"]
    diff = (logits - torch.from_numpy(npz[case["logits_key"]])).abs().max().item()
    print(f"mask  {case['case_id']}: max |logit diff| {diff:.2e}")  # shown with pytest -s
    assert diff < TOL
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
        for s in range(4):
            for l, (_, scores, norms, *_rest) in enumerate(steps[s]):
                kv = scores.shape[1]
                np.testing.assert_allclose(norms.numpy(), ref_norms[s, l, :, :kv], rtol=1e-5, atol=1e-6)
                # float32 rounding of the sums; the kept sets above are what must be exact.
                np.testing.assert_allclose(scores.numpy(), ref_scores[s, l, :, :kv], rtol=5e-5, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c["mode"] != "full"],
                         ids=[c["case_id"] for c in CASES if c["mode"] != "full"])
def test_evict_backend_matches_reference(parity_model, refparity, case):
    _, npz = refparity
    tokens, logits, steps = _run(parity_model, case, "evict")
    assert tokens == case["generated_ids"]
    diff = (logits - torch.from_numpy(npz[case["logits_key"]])).abs().max().item()
    print(f"evict {case['case_id']}: max |logit diff| {diff:.2e}")
    assert diff < TOL
    for s, layers in enumerate(steps):
        for *_rest, budget, seen, cached in layers:
            # The cache holds exactly the budget once the sample outgrew it.
            assert cached == min(seen, budget.total)
            assert seen == case["prompt_len"] + s
