"""Every method, with and without VATP and AdaKV, through the same checks.

One shared list of variants runs on tiny random GQA Llamas: evict == mask
(tokens, logits and kept sets, over enough steps to overwrite freed slots),
the full budget equal to the model's own output, and the cache holding the
budget. tests/test_batch.py runs the same list for batched == each row alone;
tests/test_peers.py checks each new method against its definition.
"""
import pytest
import torch

import vatp
from conftest import greedy, method_variants, tiny_llama, variant_id
from vatp.backends import held_bytes
from vatp.methods import Method, Prompt
from vatp.policy import Budget, accumulate

VARIANTS = method_variants()
IDS = [variant_id(v) for v in VARIANTS]


def _prompt(n, seed=5, vocab=128):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_heads=6, num_kv_heads=3, hidden=96, layers=3)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_evict_equals_mask(model, variant):
    method, apval, adakv = variant
    settings = dict(method=method, apval=apval, adakv=adakv, heavy_ratio=0.3, sink_len=3)
    runs = {}
    for backend in ("mask", "evict"):
        with vatp.enabled(model, backend=backend, **settings) as session:
            tokens, logits = greedy(model, _prompt(120), steps=40)  # 40 steps on a 72-token budget
            runs[backend] = tokens, logits, [session.layers[i].kept_positions() for i in range(3)]
    assert runs["evict"][0] == runs["mask"][0]
    torch.testing.assert_close(runs["evict"][1], runs["mask"][1], rtol=1e-5, atol=1e-5)
    assert runs["evict"][2] == runs["mask"][2]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_the_full_budget_is_the_models_own_output(model, variant):
    method, apval, adakv = variant
    ids = _prompt(90)
    own = greedy(model, ids, steps=10)
    with vatp.enabled(model, method=method, apval=apval, adakv=adakv, heavy_ratio=1.0, sink_len=3,
                      backend="evict") as session:
        ours = greedy(model, ids, steps=10)
        kept = session.layers[2].kept_positions()
    assert ours[0] == own[0]
    torch.testing.assert_close(ours[1], own[1], rtol=1e-5, atol=1e-5)
    assert kept == [list(range(90 + 9))] * 3  # every token the cache has seen


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_each_layer_keeps_its_budget(model, variant):
    method, apval, adakv = variant
    with vatp.enabled(model, method=method, apval=apval, adakv=adakv, heavy_ratio=0.3, sink_len=3,
                      backend="evict") as session:
        greedy(model, _prompt(120), steps=5)
        for layer, state in session.layers.items():
            budget, kept = state.budgets[0], [len(head) for head in state.kept_positions()]
            decoding = session.method.scores.decides_while_decoding
            assert sum(kept) == 3 * (budget.total + (0 if decoding else 4)), (layer, kept)
            if not adakv:
                assert len(set(kept)) == 1
            # The cache holds each head's own tokens and no more (AdaKV's heads unpadded), plus, where every step
            # decides, each head's slot open for the next token.
            cached = session.cache.layers[layer]
            slots = held_bytes(cached) // (2 * cached.keys.shape[-1] * cached.keys.element_size())
            assert slots == sum(kept) + (3 if decoding else 0), (layer, slots, kept)


class NegativeScores(Method):
    """A made-up method whose scores are all below 0 and accumulate while decoding: minus the key norm, minus
    the attention each step pays. The trap of pruned scores set to 0: they would beat every live one."""

    name = "negative"

    def prompt_scores(self, prompt: Prompt):
        return -prompt.key[0].norm(dim=-1).to(prompt.score_dtype)

    def step_scores(self, scores, step, norms):
        return accumulate(scores, -step)

    def budget(self, prompt_len, ratio, sink_len=0):
        n = int(ratio * prompt_len)
        return Budget(heavy=n, recent=n)


def test_a_method_with_negative_scores_never_brings_a_pruned_token_back(model):
    method = NegativeScores()
    runs = {}
    for backend in ("mask", "evict"):
        with vatp.enabled(model, method=method, heavy_ratio=0.2, backend=backend) as session:
            kept = []
            hook = model.lm_head.register_forward_hook(lambda *_: kept.append(session.layers[1].kept_positions()))
            try:
                tokens, logits = greedy(model, _prompt(100), steps=20)
            finally:
                hook.remove()
            runs[backend] = tokens, logits, kept
    assert runs["evict"][0] == runs["mask"][0] and runs["evict"][2] == runs["mask"][2]
    for before, after in zip(runs["mask"][2], runs["mask"][2][1:]):  # kept sets of consecutive forwards
        for head_before, head_after in zip(before, after):
            back = set(head_after) - set(head_before) - {max(head_after)}  # only the new token may join
            assert not back
