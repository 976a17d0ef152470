"""SnapKV and SnapKV+VATP against a direct implementation of SnapKV's definition, and evict == mask.

The direct version reads the attention and the values out of a plain eager
forward of the model (``output_attentions``), with no vatp code: the last 32
queries' attention summed per key, max-pooled over 7 neighbouring keys of the
prefix, averaged over each GQA group, times the value L1 norm for +VATP (the
first ``sink_len`` tokens kept), then the best ``budget - 32`` of the prefix
plus the 32-token window.
"""
import pytest
import torch
import torch.nn.functional as F

import vatp
from conftest import eager_forward, greedy, tiny_llama
from vatp.methods import BudgetError, get_method

WINDOW, KERNEL = 32, 7


def _prompt(n, seed=3, vocab=128):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def direct_scores(model, ids, apval, sink_len):
    """Per layer, SnapKV's (kv_heads, L - WINDOW) scores of the prefix, straight from its definition."""
    out = eager_forward(model, ids)
    kv_heads = model.config.num_key_value_heads
    prefix = ids.shape[1] - WINDOW
    scores = []
    for layer, attn in enumerate(out.attentions):  # (1, heads, L, L)
        votes = attn[0, :, -WINDOW:, :prefix].sum(dim=1)  # (heads, prefix)
        pooled = F.max_pool1d(votes[:, None], KERNEL, stride=1, padding=KERNEL // 2)[:, 0]
        grouped = pooled.view(kv_heads, -1, prefix).mean(dim=1)  # (kv_heads, prefix)
        if apval:
            values = out.past_key_values.layers[layer].values[0, :, :prefix]  # (kv_heads, prefix, d)
            grouped = grouped * values.abs().sum(dim=-1)
            grouped[:, :sink_len] = float("inf")
        scores.append(grouped)
    return scores


@pytest.mark.parametrize("apval", [False, True], ids=["snapkv", "snapkv+vatp"])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)], ids=["mha", "gqa"])
def test_kept_set_is_the_top_of_snapkvs_scores_plus_the_window(apval, heads):
    model = tiny_llama(num_heads=heads[0], num_kv_heads=heads[1], hidden=96, layers=3)
    ids, ratio, sink_len = _prompt(150), 0.25, 4
    total = 2 * int(ratio * 150)
    with vatp.enabled(model, method="snapkv", heavy_ratio=ratio, apval=apval, sink_len=sink_len) as session, \
            torch.no_grad():
        model(ids)
        kept = {layer: state.token_mask()[:, :150] for layer, state in session.layers.items()}  # (kv_heads, L)
    prefix = 150 - WINDOW
    for layer, scores in enumerate(direct_scores(model, ids, apval, sink_len)):
        assert kept[layer][:, prefix:].all()  # the window
        heavy = kept[layer][:, :prefix]
        assert heavy.sum(dim=1).tolist() == [total - WINDOW] * heads[1]
        for head in range(heads[1]):
            chosen, dropped = scores[head][heavy[head]], scores[head][~heavy[head]]
            # Top-k by definition: nothing dropped scores above anything kept (ties may fall either way).
            assert chosen.min() >= dropped.max() * (1 - 1e-5), (layer, head)
            if apval:
                assert heavy[head, :sink_len].all()


@pytest.mark.parametrize("apval", [False, True], ids=["snapkv", "snapkv+vatp"])
def test_nothing_is_pruned_while_decoding(apval):
    model = tiny_llama(num_heads=6, num_kv_heads=2, hidden=96)
    ids, steps = _prompt(120), 15
    with vatp.enabled(model, method="snapkv", heavy_ratio=0.25, apval=apval, sink_len=4) as session:
        greedy(model, ids, steps=1)
        after_prompt = session.layers[1].token_mask()[:, :120].clone()
        greedy(model, ids, steps=steps)
        state = session.layers[1]
        keep = state.token_mask()  # (kv_heads, 120 + steps - 1 cached, + the incoming slot)
    assert torch.equal(keep[:, :120], after_prompt)
    assert keep[:, 120:].all() and keep.shape[1] == 120 + steps
    assert state.scores is None and state.norms is None  # nothing is scored while decoding
    with vatp.enabled(model, method="snapkv", heavy_ratio=0.25, apval=apval, sink_len=4, backend="evict") as session:
        greedy(model, ids, steps=steps)
        cached = session.cache.layers[1].get_seq_length()
        state = session.layers[1]
    assert cached == 60 + steps - 1  # the budget, plus every generated token the cache has seen
    assert state.attended is None  # one row, so every slot holds a kept token: the model's attention, unmasked
    assert all(head[-(steps - 1):] == list(range(120, 120 + steps - 1)) for head in state.kept_positions())
    assert state.decoded == steps - 1 and int(state.cached) == 120 + steps - 1  # the tokens seen, decode steps too


@pytest.mark.parametrize("apval", [False, True], ids=["snapkv", "snapkv+vatp"])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)], ids=["mha", "gqa"])
def test_evict_equals_mask(apval, heads):
    model = tiny_llama(num_heads=heads[0], num_kv_heads=heads[1], hidden=96)
    ids = _prompt(100)
    settings = dict(method="snapkv", heavy_ratio=0.25, apval=apval, sink_len=2)
    with vatp.enabled(model, backend="mask", **settings) as session:
        mask = greedy(model, ids, steps=20)
        mask_kept = session.layers[1].kept_positions()
    with vatp.enabled(model, backend="evict", **settings) as session:
        evict = greedy(model, ids, steps=20)
        evict_kept = session.layers[1].kept_positions()
    assert evict[0] == mask[0]
    torch.testing.assert_close(evict[1], mask[1], rtol=1e-5, atol=1e-5)
    assert evict_kept == mask_kept


def test_pruning_changes_the_output_and_the_full_budget_does_not():
    model = tiny_llama(num_heads=4, num_kv_heads=2)
    ids = _prompt(100)
    full = greedy(model, ids)
    with vatp.enabled(model, method="snapkv", heavy_ratio=1.0, apval=True, sink_len=2):
        whole = greedy(model, ids)
    with vatp.enabled(model, method="snapkv", heavy_ratio=0.2):
        pruned = greedy(model, ids)
    assert whole[0] == full[0]
    torch.testing.assert_close(whole[1], full[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pruned[1], full[1], atol=1e-3)


def test_budget_counts_the_window_and_a_too_small_one_is_refused_with_the_fix():
    snapkv = get_method("snapkv")
    budget = snapkv.budget(1500, 0.1)
    assert (budget.heavy, budget.recent, budget.total) == (268, 32, 300)  # 2 * int(0.1 * 1500), window included
    assert get_method("snapkv", apval=True).budget(1500, 0.1, 20) == budget
    with pytest.raises(BudgetError, match=r"use heavy_ratio >= 0\.1333"):
        snapkv.checked_budget(120, 0.1)  # 2 * 12 = 24 < the 32-token window
    assert snapkv.checked_budget(120, snapkv.min_ratio(120)).heavy == 0
    with pytest.raises(BudgetError, match="sink_len 20 exceeds the heavy budget"):
        get_method("snapkv", apval=True).checked_budget(120, 0.2, 20)  # heavy 48 - 32 = 16 < 20 sinks
