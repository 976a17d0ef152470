"""Enabling and disabling VATP on a model: undoable, resettable, and exact where nothing is pruned."""
import pytest
import torch

import vatp
from conftest import VARIANT_IDS, VARIANTS, greedy, tiny_llama


def _prompt(n, seed=1, vocab=128):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def test_disable_leaves_no_trace():
    model = tiny_llama()
    ids = _prompt(40)
    before_impl = model.config._attn_implementation
    before_tokens, before_logits = greedy(model, ids)
    vatp.enable(model, heavy_ratio=0.1, apval=True, sink_len=2, backend="evict")
    assert model.config._attn_implementation == "vatp"
    greedy(model, ids)  # run pruned once, so there is state to clean up
    vatp.disable(model)
    assert model.config._attn_implementation == before_impl
    assert not any(hasattr(m, "_vatp_session") for m in model.modules())
    assert vatp.session_of(model) is None
    assert not model.get_decoder()._forward_pre_hooks and not model.get_decoder()._forward_hooks
    tokens, logits = greedy(model, ids)
    assert tokens == before_tokens
    assert torch.equal(logits, before_logits)
    vatp.disable(model)  # disabling twice is a no-op


def test_enabling_twice_replaces_the_settings():
    model = tiny_llama()
    ids = _prompt(60)
    vatp.enable(model, heavy_ratio=0.1, h2o=True)
    vatp.enable(model, heavy_ratio=0.25, h2o=False, backend="evict")
    session = vatp.session_of(model)
    assert (session.config.method, session.config.heavy_ratio, session.config.backend) == ("scissorhands", 0.25, "evict")
    assert len(model.get_decoder()._forward_pre_hooks) == len(model.get_decoder()._forward_hooks) == 1
    twice = greedy(model, ids)
    vatp.disable(model)
    with vatp.enabled(model, heavy_ratio=0.25, h2o=False, backend="evict"):
        once = greedy(model, ids)
    assert twice[0] == once[0] and torch.equal(twice[1], once[1])
    assert vatp.session_of(model) is None


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_a_new_sample_starts_from_a_clean_state(backend):
    model = tiny_llama()
    a, b = _prompt(50, seed=1), _prompt(70, seed=2)
    with vatp.enabled(model, heavy_ratio=0.1, apval=True, sink_len=2, backend=backend) as session:
        fresh_b = greedy(model, b)
        greedy(model, a)
        after_a = greedy(model, b)  # no explicit reset: an empty cache starts a new sample
        session.reset()
        after_reset = greedy(model, b)
    assert fresh_b[0] == after_a[0] == after_reset[0]
    assert torch.equal(fresh_b[1], after_a[1]) and torch.equal(fresh_b[1], after_reset[1])


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_full_budget_equals_full_attention(variant, backend):
    # heavy_ratio 1: a 2L budget (H2O: L + L; Scissorhands: 2L - 10 + 10) never fills, so nothing is pruned.
    model = tiny_llama(num_heads=6, num_kv_heads=2, hidden=96)
    model.set_attn_implementation("eager")
    ids = _prompt(64)
    full_tokens, full_logits = greedy(model, ids)
    with vatp.enabled(model, heavy_ratio=1.0, backend=backend, **variant):
        tokens, logits = greedy(model, ids)
    assert tokens == full_tokens
    torch.testing.assert_close(logits, full_logits, rtol=1e-5, atol=1e-5)


def test_recent_budget_zero_prunes_nothing_and_warns():
    model = tiny_llama()
    ids = _prompt(48)
    full = greedy(model, ids)
    with vatp.enabled(model, heavy_ratio=0.02, h2o=True, apval=True, sink_len=0):  # int(0.02*48) == 0
        with pytest.warns(UserWarning, match="recent budget of 0"):
            pruned = greedy(model, ids)
    assert pruned[0] == full[0]
    torch.testing.assert_close(pruned[1], full[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_gqa_decision_reduces_to_mha(variant):
    """A GQA model whose query heads in a group are identical behaves like its MHA expansion.

    Then the group mean equals each head's own score, so one decision per KV
    head is exactly the paper's per-head decision.
    """
    gqa = tiny_llama(num_heads=6, num_kv_heads=2, seed=3, hidden=96)
    mha = tiny_llama(num_heads=6, num_kv_heads=6, seed=3, hidden=96)
    shared = {k: v for k, v in gqa.state_dict().items() if "k_proj" not in k and "v_proj" not in k}
    mha.load_state_dict(shared, strict=False)
    d = gqa.config.head_dim
    with torch.no_grad():
        for lg, lm in zip(gqa.model.layers, mha.model.layers):
            q = lg.self_attn.q_proj.weight.view(2, 3, d, -1)
            q[:] = q[:, :1]  # the 3 query heads of a group are the same
            lm.self_attn.q_proj.weight.copy_(q.reshape(6 * d, -1))
            for name in ("k_proj", "v_proj"):
                w = getattr(lg.self_attn, name).weight.view(2, 1, d, -1).expand(2, 3, d, -1)
                getattr(lm.self_attn, name).weight.copy_(w.reshape(6 * d, -1))
    ids = _prompt(120)
    settings = dict(heavy_ratio=0.1, sink_len=2, **variant)
    with vatp.enabled(gqa, **settings):
        gqa_out = greedy(gqa, ids)
        gqa_keep = vatp.session_of(gqa).layers[1].token_mask()
    with vatp.enabled(mha, **settings):
        mha_out = greedy(mha, ids)
        mha_keep = vatp.session_of(mha).layers[1].token_mask()
    assert gqa_out[0] == mha_out[0]
    torch.testing.assert_close(gqa_out[1], mha_out[1], rtol=1e-4, atol=1e-4)
    assert torch.equal(gqa_keep.repeat_interleave(3, 0), mha_keep)


def test_unsupported_model_is_refused():
    with pytest.raises(ValueError, match="Llama-family"):
        vatp.enable(torch.nn.Linear(2, 2), heavy_ratio=0.1)


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_streaming_keeps_exactly_the_sinks_and_the_newest_tokens(backend):
    model = tiny_llama(num_heads=4, num_kv_heads=2)
    ids = _prompt(100)
    with vatp.enabled(model, method="streaming", heavy_ratio=0.25, sink_len=4, backend=backend) as session, \
            torch.no_grad():
        model(ids)
        state = session.layers[1]
        cached = session.cache.layers[1].get_seq_length()
    budget = state.budgets[0]
    assert (budget.heavy, budget.recent) == (4, 46)
    expected = [*range(4), *range(100 - 46, 101)]  # sinks, recent, incoming slot
    assert all(row.nonzero().flatten().tolist() == expected for row in state.token_mask())
    assert cached == (50 if backend == "evict" else 100)  # evict: the budget (the next token's slot aside)


def test_evict_reuses_freed_slots_and_keeps_the_right_tokens():
    """Steady-state decode writes each new token into the slot it evicted: no growth, no copy.

    StreamingLLM's kept set is known (sinks + newest), so the slots can be
    checked against a full-cache run: layer 0's keys depend only on token
    and position, so each kept slot must hold the key of its own position.
    """
    model = tiny_llama(num_heads=4, num_kv_heads=2)
    prompt, steps = _prompt(40), 30
    with vatp.enabled(model, method="streaming", heavy_ratio=0.25, sink_len=4, backend="evict") as session, \
            torch.no_grad():
        out = model(prompt)
        cache, tokens, buffers = out.past_key_values, [out.logits[0, -1].argmax()], []
        for _ in range(steps):
            out = model(tokens[-1].view(1, 1), past_key_values=cache)
            tokens.append(out.logits[0, -1].argmax())
            buffers.append((cache.layers[0].keys.data_ptr(), cache.layers[0].keys.shape[-2]))
        layer, state = cache.layers[0], session.layers[0]
    budget = state.budgets[0]
    assert len(set(buffers)) == 1  # one buffer, written in place, from the first step on
    assert buffers[-1][1] == budget.total + 1  # the budget plus the slot the next token overwrites
    assert layer.get_seq_length() == budget.total
    # Each head's kept slots (the one open for the next token aside: its slot is ``free``).
    slots = [(state.attended[0, head] & (torch.arange(budget.total + 1) != state.free[0, head])).nonzero().flatten()
             for head in range(2)]
    held = [state.positions[0, head, slots[head]] for head in range(2)]  # their tokens' positions, by slot
    assert held[0].tolist() != sorted(held[0].tolist())  # slots were reused out of order

    full = torch.cat([prompt, torch.stack(tokens[:-1]).view(1, -1)], dim=1)  # what the cache has seen
    with torch.no_grad():
        reference = model(full).past_key_values.layers[0].keys  # (1, kv_heads, seen, d)
    seen = full.shape[1]
    positions = [*range(budget.heavy), *range(seen - budget.recent, seen)]
    for head in range(2):
        assert sorted(held[head].tolist()) == positions
        in_order = slots[head][held[head].argsort()]
        torch.testing.assert_close(layer.keys[0, head, in_order], reference[0, head, positions])


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_evict_equals_mask_over_many_reused_slots(variant):
    # 60 steps on a 40-token budget: every slot is overwritten, most of them more than once.
    model = tiny_llama(num_heads=6, num_kv_heads=2, hidden=96)
    ids = _prompt(80)
    settings = dict(heavy_ratio=0.25, sink_len=2, **variant)
    with vatp.enabled(model, backend="mask", **settings):
        mask = greedy(model, ids, steps=60)
    with vatp.enabled(model, backend="evict", **settings):
        evict = greedy(model, ids, steps=60)
    assert evict[0] == mask[0]
    torch.testing.assert_close(evict[1], mask[1], rtol=1e-5, atol=1e-5)
