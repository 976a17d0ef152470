"""A left-padded batch prunes each row exactly as if it ran alone: same tokens, same kept sets, no padding kept.

Every method, with and without VATP, both backends, float32, on tiny random
Llamas (MHA and GQA) with prompts whose lengths differ by more than a budget.
"""
import pytest
import torch

import vatp
from conftest import method_variants, tiny_llama, variant_id

LENGTHS = [150, 57, 95]  # 150 - 57 = 93: more than the budgets of the shorter rows (38, 66)
# Every method with and without VATP; AdaKV's head budgets on one decoding and one prompt-only method.
VARIANTS = method_variants(adakv=(False,)) + [("h2o", True, True), ("snapkv", False, True)]
VARIANT_IDS = [variant_id(v) for v in VARIANTS]
STEPS = 16


def _prompts(lengths, vocab=128):
    return [torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]


def _left_padded(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def _generate(model, ids, mask):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                             pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def _kept(session, row):
    """Per layer, the positions (of the row's own tokens) each KV head keeps."""
    return {i: state.kept_positions(row) for i, state in session.layers.items()}


@pytest.mark.parametrize("backend", ["mask", "evict"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_a_batch_equals_each_row_alone(variant, backend):
    method, apval, adakv = variant
    model = tiny_llama(num_heads=6, num_kv_heads=2, hidden=96)
    prompts = _prompts(LENGTHS)
    settings = dict(method=method, apval=apval, adakv=adakv, heavy_ratio=0.35, sink_len=4, backend=backend)
    alone, kept_alone = [], []
    with vatp.enabled(model, **settings) as session:
        for prompt in prompts:
            alone.append(_generate(model, prompt[None], torch.ones(1, len(prompt), dtype=torch.long))[0])
            kept_alone.append(_kept(session, 0))
        batched = _generate(model, *_left_padded(prompts))
        kept_batched = [_kept(session, row) for row in range(len(prompts))]
    assert batched == alone
    assert kept_batched == kept_alone


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_padding_is_never_attended_nor_kept(backend):
    model = tiny_llama(num_heads=4, num_kv_heads=2)
    ids, mask = _left_padded(_prompts([80, 30]))
    with vatp.enabled(model, heavy_ratio=0.25, h2o=True, apval=True, sink_len=2, backend=backend) as session:
        _generate(model, ids, mask)
        state = session.layers[0]
        assert session.pads == [0, 50]
        assert [b.total for b in state.budgets] == [40, 14]  # each row's own length
        assert [len(heads[0]) for heads in map(state.kept_positions, (0, 1))] == [40, 14]
        if backend == "mask":  # the cache holds every column; row 1's padding is never attended
            assert not state.attended[1, :, :50].any() and (state.attended[1].sum(dim=1) == 14).all()
        else:  # one slot per token of the larger budget, plus the one the next token takes
            cache = session.cache.layers[0]
            assert cache.keys.shape[-2] == 41 and state.attended.shape[-1] == 41
            # its 14 kept tokens and the slot open for the next one (its 15th, unused so far)
            assert (state.attended[1].sum(dim=1) == 15).all() and not state.attended[1, :, 15:].any()
        held = state.positions[1].expand_as(state.attended[1])[state.attended[1]]
        assert int(held.min()) >= 0  # own tokens only (no padding)
