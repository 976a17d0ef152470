"""TOVA, KNorm, CriticalKV, PyramidKV and AdaKV against their definitions, read from a plain eager forward.

Each expected kept set is computed here from the model's own attention, keys,
values and weights (``output_attentions`` of an eager forward, no vatp code),
straight from the method's paper, and compared with what vatp keeps.
"""
import pytest
import torch

import vatp
from conftest import eager_forward, greedy, tiny_llama
from test_snapkv import WINDOW, direct_scores

RATIO, SINKS, LENGTH = 0.3, 3, 150
TOTAL = 2 * int(RATIO * LENGTH)  # 90 tokens, every method's budget


def _prompt(n=LENGTH, seed=11, vocab=128):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_heads=6, num_kv_heads=3, hidden=96, layers=3)


def _kept_after_prompt(model, ids, **settings):
    """Per layer, per KV head, the set of prompt positions vatp keeps for the first generated token."""
    with vatp.enabled(model, heavy_ratio=RATIO, sink_len=SINKS, **settings) as session, torch.no_grad():
        model(ids)
        return [[set(head) for head in session.layers[i].kept_positions()] for i in sorted(session.layers)]


def _top(scores, k):
    """The positions of the ``k`` best of ``scores`` (n,) as a set, equal scores to the older token (SnapKV's
    max-pooling makes many)."""
    return set(scores.sort(descending=True, stable=True).indices[:k].tolist())


@pytest.mark.parametrize("apval", [False, True], ids=["tova", "tova+vatp"])
def test_tova_keeps_the_newest_querys_best_at_every_step(model, apval):
    """Layer 0's queries and keys depend only on the tokens, so its attention over the tokens vatp keeps is the
    plain model's attention renormalised over them, at the prompt and at every decode step."""
    ids, steps = _prompt(), 12
    kept = []
    with vatp.enabled(model, method="tova", apval=apval, heavy_ratio=RATIO, sink_len=SINKS) as session:
        hook = model.lm_head.register_forward_hook(lambda *_: kept.append(session.layers[0].kept_positions()))
        try:
            tokens, _ = greedy(model, ids, steps)
        finally:
            hook.remove()
    full = torch.cat([ids, torch.tensor([tokens[:-1]])], dim=1)
    out = eager_forward(model, full)
    attn = out.attentions[0][0]  # (heads, N, N), the plain model's layer 0
    norms = out.past_key_values.layers[0].values[0].abs().sum(dim=-1)  # (kv_heads, N)
    attended = [set(range(LENGTH))] * 3  # the prompt's last query sees every prompt token
    for step, query in enumerate(range(LENGTH - 1, full.shape[1])):
        for head in range(3):
            seen = sorted(attended[head] | {query})
            probs = attn[2 * head:2 * head + 2, query, seen]
            scores = (probs / probs.sum(dim=-1, keepdim=True)).mean(dim=0)  # renormalised, GQA group mean
            if apval:
                scores = scores * norms[head, seen]
            ranked = [p for p in seen if p >= SINKS] if apval else seen
            top = _top(scores[[seen.index(p) for p in ranked]], TOTAL - (SINKS if apval else 0))
            expected = {ranked[i] for i in top} | (set(range(SINKS)) if apval else set())
            assert set(kept[step][head]) == expected, (step, head)
        attended = [set(h) for h in kept[step]]


def test_knorm_keeps_the_keys_of_lowest_norm(model):
    ids = _prompt()
    kept = _kept_after_prompt(model, ids, method="knorm")
    keys = eager_forward(model, ids).past_key_values
    for layer in range(3):
        norms = keys.layers[layer].keys[0].norm(dim=-1)  # (kv_heads, L), after RoPE
        assert kept[layer] == [_top(-norms[head], TOTAL) for head in range(3)], layer


def test_criticalkv_keeps_snapkvs_best_then_the_best_projected_value_perturbation(model):
    ids = _prompt()
    kept = _kept_after_prompt(model, ids, method="criticalkv")
    out = eager_forward(model, ids)
    prefix, heavy = LENGTH - WINDOW, TOTAL - WINDOW
    first = int(0.5 * TOTAL) - WINDOW
    for layer, snap in enumerate(direct_scores(model, ids, apval=False, sink_len=0)):  # (kv_heads, prefix)
        values = out.past_key_values.layers[layer].values[0, :, :prefix]  # (kv_heads, prefix, d)
        o_proj = model.model.layers[layer].self_attn.o_proj.weight  # (hidden, heads * d)
        d = values.shape[-1]
        projected = torch.stack([(values[h // 2] @ o_proj[:, h * d:(h + 1) * d].T).abs().sum(dim=-1)
                                 for h in range(6)]).view(3, 2, prefix).mean(dim=1)
        for head in range(3):
            stage1 = _top(snap[head], first)
            # epsilon added to the window's mean attention, as kvpress's CriticalKVPress adds it
            stage2 = ((snap[head] / WINDOW + 1e-4) * projected[head]).index_fill(0, torch.tensor(sorted(stage1)), -1.0)
            expected = stage1 | _top(stage2, heavy - first) | set(range(prefix, LENGTH))
            assert kept[layer][head] == expected, (layer, head)


@pytest.mark.parametrize("apval", [False, True], ids=["pyramidkv", "pyramidkv+vatp"])
def test_pyramidkv_spends_more_of_the_same_total_on_lower_layers(model, apval):
    ids = _prompt()
    kept = _kept_after_prompt(model, ids, method="pyramidkv", apval=apval)
    heavy = [len(kept[layer][0]) - WINDOW for layer in range(3)]
    even = TOTAL - WINDOW
    assert sum(heavy) == 3 * even and heavy[0] > heavy[1] > heavy[2]
    low = max(even // 20, SINKS if apval else 0)  # h / beta, but room for the sinks where they are kept
    assert heavy == [2 * even - low, even, low]  # linear from 2h - low to low
    for layer, snap in enumerate(direct_scores(model, ids, apval=apval, sink_len=SINKS)):
        for head in range(3):
            assert kept[layer][head] == _top(snap[head], heavy[layer]) | set(range(LENGTH - WINDOW, LENGTH))


def test_adakv_spreads_each_layers_budget_over_its_heads_by_score(model):
    ids = _prompt()
    kept = _kept_after_prompt(model, ids, method="snapkv", adakv=True)
    prefix, even = LENGTH - WINDOW, TOTAL - WINDOW
    safe = int(0.2 * even)
    for layer, snap in enumerate(direct_scores(model, ids, apval=False, sink_len=0)):
        guaranteed = [_top(snap[head], safe) for head in range(3)]
        rest = torch.stack([snap[h].index_fill(0, torch.tensor(sorted(guaranteed[h])), -1.0) for h in range(3)])
        # the best across heads; equal scores to the older token, then to the lower head
        won = rest.T.flatten().sort(descending=True, stable=True).indices[:3 * (even - safe)]
        for head in range(3):
            shared = {int(i) // 3 for i in won if int(i) % 3 == head}
            assert kept[layer][head] == guaranteed[head] | shared | set(range(prefix, LENGTH)), (layer, head)
        assert sum(len(k) - WINDOW for k in kept[layer]) == 3 * even
        assert len({len(k) for k in kept[layer]}) > 1  # the heads' budgets differ
