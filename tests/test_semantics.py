"""What a method's scores mean, and the combinations that used to do something other than their names say.

* VATP's direction: among tokens a method ranks alike, the one with the larger value norm is never pruned
  before the one with the smaller, at the prompt and at every decode step; methods whose scores are not
  attention (KNorm's signed key norms, StreamingLLM's none) refuse VATP and AdaKV;
* CriticalKV's first stage breaks ties as every decision does (to the older token), and its epsilon is added
  to the window's mean attention, as in kvpress;
* a decode loop written by hand, without ``position_ids``, gives ``generate``'s tokens for every method and
  both backends (prompt-only methods used to decode at the prompt's position);
* a budget of no token is refused with the smallest ratio that works; a cache vatp did not fill is refused;
  ``h2o`` is a bool and does not override ``method``; AdaKV on a row that keeps everything runs.
"""
import copy

import pytest
import torch
from transformers import DynamicCache

import vatp
from conftest import greedy, method_variants, tiny_llama, variant_id
from vatp.methods import BudgetError, Prompt, Scores, get_method, method_class
from vatp.names import METHODS
from vatp.policy import Budget, Limits, keep_slots, step_victim
from vatp.refusals import UnsupportedError

HEADS, DV, LENGTH, SINKS = 2, 2, 120, 3  # one KV head shared by two query heads


def _prompt_with_equal_attention(norms: torch.Tensor, budget: Budget) -> Prompt:
    """One layer's prompt whose every token draws the same attention and has the same key and the same
    ``o_proj``-projected value (``W_o`` reads a value's first coordinate only, which is 1), and whose
    value L1 norms are ``1 + norms``: a method ranks every token alike, and only VATP can tell them apart."""
    value = torch.stack([torch.ones_like(norms), norms], dim=-1)[None, None]  # (1, 1, L, 2)
    module = torch.nn.Module()
    module.o_proj = torch.nn.Linear(HEADS * DV, HEADS * DV, bias=False)
    with torch.no_grad():
        module.o_proj.weight.copy_(torch.diag(torch.tensor([1.0, 0.0] * HEADS)))
    return Prompt(key=torch.ones(1, 1, LENGTH, DV), value=value,
                  module=module, layer_idx=0, attention=torch.ones(HEADS, LENGTH), sink_len=SINKS,
                  score_dtype=torch.float32, budget=budget)


@pytest.mark.parametrize("name", list(METHODS))
def test_vatp_keeps_the_larger_value_among_tokens_its_method_ranks_alike(name):
    norms = torch.rand(LENGTH, generator=torch.Generator().manual_seed(3))
    if not method_class(name).scores.is_attention:
        with pytest.raises(UnsupportedError, match="drop apval"):
            get_method(name, apval=True)
        return
    method, weighted = get_method(name), get_method(name, apval=True)
    budget = weighted.checked_budget(LENGTH, 0.2, SINKS)
    prompt = _prompt_with_equal_attention(norms, budget)
    alike, scores = method.prompt_scores(prompt)[0], weighted.prompt_scores(prompt)[None]  # (L,), (1, 1, L)
    positions = torch.arange(LENGTH).view(1, 1, -1)
    limits = Limits.of([budget], "cpu", SINKS)
    kept = keep_slots(scores, positions, torch.ones_like(scores, dtype=torch.bool), torch.tensor([[[LENGTH]]]),
                      limits)[0, 0]
    ranked = torch.arange(SINKS, LENGTH - budget.recent)  # neither a sink nor recent: kept by score alone
    pairs = [(i, j) for i in ranked for j in ranked if kept[i] and not kept[j] and alike[i] == alike[j]]
    assert pairs, "the method ranks no kept and pruned tokens alike: nothing is tested"
    assert all(norms[i] > norms[j] for i, j in pairs)

    if not weighted.scores.decides_while_decoding:
        return
    step = torch.full((1, 1, LENGTH), 0.01)  # the same attention from the new query for every slot
    stepped = weighted.step_scores(torch.zeros(1, 1, LENGTH), step, (1 + norms).view(1, 1, -1))
    cached = torch.tensor([[[LENGTH + 1]]])  # one token more than the budget: one slot leaves
    tight = Limits.of([Budget(heavy=LENGTH - 1 - SINKS, recent=1)], "cpu", SINKS)
    victim, leaves = step_victim(stepped, positions, torch.ones(1, 1, LENGTH, dtype=torch.bool), cached, tight)
    assert bool(leaves) and int(victim) == SINKS + int(norms[SINKS:LENGTH - 1].argmin())


@pytest.mark.parametrize("name", [n for n in METHODS if not method_class(n).scores.is_attention])
def test_adakv_refuses_scores_that_do_not_compare_across_heads(name):
    with pytest.raises(UnsupportedError, match="drop adakv"):
        vatp.VatpConfig(method=name, adakv=True)


def test_each_method_declares_what_its_scores_mean():
    kinds = {name: method_class(name).scores for name in METHODS}
    assert kinds == {"h2o": Scores.ACCUMULATED, "scissorhands": Scores.ACCUMULATED, "streaming": Scores.NONE,
                     "snapkv": Scores.PROMPT, "tova": Scores.LATEST, "knorm": Scores.SIGNED,
                     "criticalkv": Scores.PROMPT, "pyramidkv": Scores.PROMPT}
    assert get_method("tova", apval=True).scores is Scores.LATEST  # VATP keeps its method's meaning


def test_criticalkvs_first_stage_gives_equal_scores_to_the_older_token():
    method = get_method("criticalkv")
    budget = method.checked_budget(LENGTH, 0.4, 0)  # 96 tokens: 16 by attention alone, 48 by the product
    first = int(0.5 * budget.total) - method.window
    prompt = _prompt_with_equal_attention(torch.rand(LENGTH, generator=torch.Generator().manual_seed(4)), budget)
    scores = method.prompt_scores(prompt)[0]  # every token ties on attention (torch.topk picks 46-65 here)
    chosen = (scores == torch.finfo(scores.dtype).max).nonzero().flatten().tolist()
    assert chosen == list(range(first))  # the oldest


def test_criticalkvs_epsilon_is_added_to_the_windows_mean_attention():
    """Tokens 0-3 draw no attention (nor do their neighbours in SnapKV's pooling), tokens 4-7 draw 1e-4 on
    average over the 32 window queries; token 0's projected value is 3 times token 7's. With epsilon 1e-4 added
    to the mean, token 0 wins (3e-4 > 2e-4); added to the sum, as before, token 7 would (33e-4 > 3e-4)."""
    method = get_method("criticalkv")
    length = method.window + 8
    prompt = _prompt_with_equal_attention(torch.zeros(length), Budget(heavy=1, recent=method.window))
    prompt.value[0, 0, :, 0] = torch.tensor([3.0] + [1.0] * (length - 1))  # what W_o reads
    prompt.attention = torch.ones(HEADS, length)
    prompt.attention[:, :8] = torch.tensor([0.0] * 4 + [1e-4 * method.window] * 4)
    scores = method.prompt_scores(prompt)[0]
    torch.testing.assert_close(scores[[0, 7]], torch.tensor([1e-4 * 3, 2e-4 * 1]))


def test_criticalkv_with_planted_ties_decides_a_batch_as_each_row_alone_in_any_order():
    """Queries of 0 make every layer's attention uniform, so SnapKV's window votes tie over the whole prefix."""
    model = tiny_llama(num_heads=4, num_kv_heads=2, hidden=64)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    prompts = [torch.randint(0, 128, (n,), generator=torch.Generator().manual_seed(n)) for n in (140, 90, 115)]
    settings = dict(method="criticalkv", heavy_ratio=0.4, backend="evict")
    with vatp.enabled(model, **settings) as session:
        alone = []
        for ids in prompts:
            model(ids[None])
            alone.append([session.layers[i].kept_positions() for i in sorted(session.layers)])
        for order in ([0, 1, 2], [2, 0, 1]):
            width = max(len(prompts[i]) for i in order)
            ids = torch.stack([torch.cat([torch.zeros(width - len(prompts[i]), dtype=torch.long), prompts[i]])
                               for i in order])
            mask = (ids != 0) | (torch.arange(width) >= width - torch.tensor([[len(prompts[i])] for i in order]))
            model(ids, attention_mask=mask.long())
            for row, i in enumerate(order):
                assert [session.layers[layer].kept_positions(row) for layer in sorted(session.layers)] == alone[i]


def _decode_by_hand(model, ids, steps):
    """Greedy tokens from a loop of forwards that passes no position_ids, as a hand-written decode loop does."""
    cache, tokens = DynamicCache(config=model.config), []
    with torch.no_grad():
        logits = model(ids, past_key_values=cache).logits
        for _ in range(steps):
            tokens.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[tokens[-1]]]), past_key_values=cache).logits
    return tokens


@pytest.mark.parametrize("backend", ["mask", "evict"])
@pytest.mark.parametrize("variant", method_variants(adakv=(False,)), ids=variant_id)
def test_a_decode_loop_without_position_ids_gives_generates_tokens(variant, backend):
    method, apval, _ = variant
    model = tiny_llama(num_heads=4, num_kv_heads=2, hidden=64)
    ids = torch.randint(0, 128, (1, 90), generator=torch.Generator().manual_seed(2))
    with vatp.enabled(model, method=method, apval=apval, heavy_ratio=0.3, sink_len=2, backend=backend):
        assert _decode_by_hand(model, ids, 10) == greedy(model, ids, 10)[0]


@pytest.mark.parametrize("name", ["tova", "knorm", "streaming"])
def test_a_budget_of_no_token_is_refused_with_the_smallest_ratio_that_works(name):
    with pytest.raises(BudgetError, match=r"keeps no token of a 3-token prompt.*heavy_ratio >= 0\.33"):
        get_method(name).checked_budget(3, 0.3)
    model = tiny_llama()
    with vatp.enabled(model, method=name, heavy_ratio=0.3, backend="evict"), pytest.raises(BudgetError):
        greedy(model, torch.tensor([[5, 6, 7]]), 2)


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_a_cache_vatp_did_not_fill_is_refused_whatever_came_before(backend):
    model = tiny_llama()
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        foreign = DynamicCache(config=model.config)
        model(ids, past_key_values=foreign)  # filled with vatp off
        with vatp.enabled(model, heavy_ratio=0.25, backend=backend):
            greedy(model, ids, 3)  # an earlier sample
            with pytest.raises(UnsupportedError, match="not the ones vatp pruned"):
                model(torch.tensor([[1]]), past_key_values=foreign)
            own = DynamicCache(config=model.config)
            model(ids, past_key_values=own)
            with pytest.raises(UnsupportedError, match="is a copy"):  # the prompt-cache reuse pattern
                model(torch.tensor([[1, 2]]), past_key_values=copy.deepcopy(own))


@pytest.mark.parametrize("settings,message", [
    (dict(h2o=True, method="tova"), "give one of them"),
    (dict(h2o="yes"), "h2o must be a bool"),
    (dict(h2o=None), "h2o must be a bool"),
])
def test_h2o_is_a_bool_and_never_overrides_method(settings, message):
    with pytest.raises(ValueError, match=message):
        vatp.enable(tiny_llama(), **settings)


def test_adakv_on_a_row_that_keeps_everything_runs_as_without_adakv():
    """int(r*L) == 0 gives H2O a recent budget of 0, which keeps every token (the paper's quirk); AdaKV's share
    of a heavy budget below the sinks is none, not negative."""
    model = tiny_llama(num_heads=4, num_kv_heads=2, hidden=64)
    ids = torch.tensor([[3, 4, 5, 6]])
    runs = []
    for adakv in (False, True):
        with vatp.enabled(model, h2o=True, apval=True, adakv=adakv, sink_len=2, heavy_ratio=0.2), \
                pytest.warns(UserWarning, match="nothing is pruned"):
            runs.append(greedy(model, ids, 4)[0])
    assert runs[0] == runs[1] == greedy(model, ids, 4)[0]
