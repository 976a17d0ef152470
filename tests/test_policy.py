"""The policy's pure functions: budgets, the keep decision in cache coordinates and its quirks, ties, sinks,
value weighting, GQA grouping, config validation."""
import pytest
import torch

from vatp import VatpConfig
from vatp.methods import BudgetError, get_method
from vatp.policy import (NO_POSITION, Budget, Limits, accumulate, drop_pruned, group_to_kv_heads, keep_slots, leaving,
                         protect_sinks, rank_key, step_victim, value_l1_norm)


def decide(scores, budget, positions=None, attended=None):
    """One row's decision over its tokens in order: scores (H, K) -> keep (H, K) bool."""
    heads, k = scores.shape
    positions = torch.arange(k)[None, None] if positions is None else positions[None]
    attended = torch.ones(1, heads, k, dtype=torch.bool) if attended is None else attended[None]
    cached = torch.tensor([[[k]]])
    return keep_slots(scores[None], positions, attended, cached, Limits.of([budget], "cpu"))[0]


@pytest.mark.parametrize("ratio,length,heavy,recent", [(0.1, 150, 15, 15), (0.25, 150, 37, 37), (0.25, 520, 130, 130),
                                                      (0.02, 48, 0, 0)])
def test_h2o_budget(ratio, length, heavy, recent):
    assert get_method("h2o").budget(length, ratio) == Budget(heavy, recent, keeps_all=recent == 0)


@pytest.mark.parametrize("ratio,length,heavy", [(0.1, 150, 20), (0.25, 150, 64), (0.1, 520, 94), (0.25, 520, 250),
                                               (0.5, 48, 38)])
def test_scissorhands_budget(ratio, length, heavy):
    # heavy = 2 * int(r * L) - 10, recent = 10, whatever r is (the paper's code)
    assert get_method("scissorhands").budget(length, ratio) == Budget(heavy, 10)


def test_negative_scissorhands_budget_is_refused_with_the_smallest_ratio():
    method = get_method("scissorhands")
    with pytest.raises(BudgetError, match=r"48-token prompt.*heavy_ratio >= 0\.1042"):
        method.checked_budget(48, 0.1, 0, False)  # 2*int(4.8) - 10 = -2: the paper's code crashes in topk
    assert method.checked_budget(48, 0.1042, 0, False).heavy >= 0


def test_sinks_that_overflow_the_heavy_budget_are_refused():
    h2o = get_method("h2o")
    assert h2o.checked_budget(48, 0.1, 4, True) == Budget(4, 4)  # heavy == sink_len: the sinks are the heavy set
    with pytest.raises(BudgetError, match="sink_len 5 exceeds the heavy budget"):
        h2o.checked_budget(48, 0.1, 5, True)
    assert h2o.checked_budget(48, 0.1, 5, False) == Budget(4, 4)  # without apval sinks do nothing


def test_keep_keeps_heavy_best_older_plus_recent():
    scores = torch.tensor([[5.0, 1.0, 4.0, 0.5, 3.0, 2.0, 0.1, 0.2, 0.3, 0.4]])  # K = 10
    keep = decide(scores, Budget(heavy=2, recent=3))
    # top-2 of [0, 7) are positions 0 and 2; the 3 recent are 7..9. The incoming token comes on top: the
    # paper's code's kept set of heavy + recent + 1 (it meant recent - 1 cached; a write via a view keeps one more).
    assert keep[0].nonzero().flatten().tolist() == [0, 2, 7, 8, 9]


def test_keep_keeps_everything_within_budget_and_the_paper_keeps_everything_without_recent():
    scores = torch.rand(3, 8)
    assert decide(scores, Budget(4, 4)).all()  # K == total
    assert decide(scores, Budget(2, 0, keeps_all=True)).all()  # H2O, recent 0: the paper's code prunes nothing
    assert decide(scores, Budget(2, 0)).sum(dim=1).tolist() == [2, 2, 2]  # another method: recent 0 is a budget


def test_keep_with_zero_heavy_keeps_only_recent():
    keep = decide(torch.rand(2, 10), Budget(heavy=0, recent=3))
    assert keep.sum(dim=1).tolist() == [3, 3] and keep[:, -3:].all()


def test_equal_scores_keep_the_older_token_wherever_its_slot_is():
    scores = torch.tensor([[1.0, 2.0, 1.0, 1.0, 0.0, 0.0]])
    assert decide(scores, Budget(heavy=2, recent=2))[0].tolist() == [True, True, False, False, True, True]
    # The same tokens in other slots (as the evict backend reuses them): the same tokens are kept.
    order = torch.tensor([3, 0, 5, 1, 2, 4])
    keep = decide(scores[:, order], Budget(heavy=2, recent=2), positions=order[None])
    assert sorted(order[keep[0]].tolist()) == [0, 1, 4, 5]


def test_rank_key_orders_like_the_scores_with_ties_to_the_older_token():
    values = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 65504.0, float("inf")])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        scores = values.to(dtype)
        keys = rank_key(scores[None, None], torch.zeros(1, 1, len(values), dtype=torch.long))[0, 0]
        for i in range(len(values)):
            for j in range(len(values)):
                assert (keys[i] > keys[j]) == bool(scores[i] > scores[j]), (dtype, i, j)
    tied = rank_key(torch.ones(1, 1, 3), torch.tensor([[[7, 2, 5]]]))[0, 0]
    assert tied.argsort(descending=True).tolist() == [1, 2, 0]  # the oldest first


def test_a_pruned_token_never_returns_even_with_negative_scores():
    scores = -torch.arange(1.0, 11.0)[None]  # every live score below 0, as KNorm's
    keep = decide(scores, Budget(heavy=2, recent=2))
    scores = drop_pruned(scores, keep)
    assert scores[0, 2:8].eq(float("-inf")).all()
    # The next step: a new token, every score unchanged. Only kept tokens compete, however low they score.
    nxt = decide(torch.cat([scores, torch.zeros(1, 1)], dim=1), Budget(heavy=2, recent=2),
                 attended=torch.cat([keep, torch.ones(1, 1, dtype=torch.bool)], dim=1))
    assert nxt[0].nonzero().flatten().tolist() == [0, 1, 9, 10]


def test_a_batch_decides_each_row_as_alone():
    torch.manual_seed(0)
    budgets = [Budget(5, 3), Budget(12, 4), Budget(2, 2, keeps_all=True), Budget(9, 0)]
    lengths = [30, 24, 16, 40]
    width = max(lengths)
    scores = torch.full((4, 2, width), float("-inf"))
    positions = torch.full((4, 1, width), NO_POSITION)
    alone = []
    for row, (budget, n) in enumerate(zip(budgets, lengths)):
        own = torch.randint(0, 4, (2, n)).float()  # many ties
        scores[row, :, width - n:], positions[row, 0, width - n:] = own, torch.arange(n)
        alone.append(decide(own, budget))
    attended = (positions >= 0).expand(4, 2, width)
    keep = keep_slots(scores, positions, attended, torch.tensor(lengths).view(4, 1, 1), Limits.of(budgets, "cpu"))
    for row, n in enumerate(lengths):
        assert torch.equal(keep[row, :, width - n:], alone[row]) and not keep[row, :, :width - n].any()


@pytest.mark.parametrize("sinks", [0, 3])
@pytest.mark.parametrize("latest", [False, True], ids=["accumulated", "replaced"])
def test_a_decode_steps_victim_is_the_full_decisions_one_slot(sinks, latest):
    """step_victim, in O(C), leaves exactly the slot keep_slots would prune, over 60 steps of a left-padded batch
    with a budget per row (one that does not prune yet, one that keeps all), scores with many ties, and per-head
    budgets (AdaKV): it decides as the full decision at every step."""
    torch.manual_seed(1)
    lengths, budgets = [40, 25, 12, 30], [Budget(8, 4), Budget(10, 0), Budget(9, 6), Budget(3, 3, keeps_all=True)]
    heads, width = 2, max(lengths)
    positions = (torch.arange(width) - (width - torch.tensor(lengths)).view(-1, 1, 1)).clamp(min=NO_POSITION)
    attended = (positions >= 0).expand(4, heads, width).clone()
    scores = torch.randint(0, 3, (4, heads, width)).float().masked_fill(~attended, float("-inf"))
    heavy = torch.tensor([b.heavy for b in budgets]).view(-1, 1, 1) + torch.tensor([0, 1]).view(1, -1, 1)
    limits = Limits.of(budgets, "cpu", sinks, heavy=heavy)
    cached = torch.tensor(lengths).view(-1, 1, 1)
    attended = keep_slots(scores, positions, attended, cached, limits)
    scores = drop_pruned(scores, attended)
    for _ in range(60):  # each step appends the new token's slot, as the mask backend does
        cached = cached + 1
        positions = torch.cat([positions, cached - 1], dim=-1)
        attended = torch.cat([attended, torch.ones(4, heads, 1, dtype=torch.bool)], dim=-1)
        step = torch.randint(0, 2, (4, heads, positions.shape[-1])).float()
        scores = torch.cat([scores, torch.zeros(4, heads, 1)], dim=-1)
        scores = step.masked_fill(~attended, float("-inf")) if latest else accumulate(scores, step)
        full = keep_slots(scores, positions, attended, cached, limits)
        victim, leaves = step_victim(scores, positions, attended, cached, limits)
        assert torch.equal(attended > leaving(attended, victim, leaves), full)
        attended, scores = full, drop_pruned(scores, full)


def test_drop_pruned_and_accumulate():
    scores = torch.tensor([[[1.0, 2.0, 3.0]]])
    keep = torch.tensor([[[True, False, True]]])
    assert drop_pruned(scores, keep).tolist() == [[[1.0, float("-inf"), 3.0]]]
    step = torch.tensor([[[0.5, 0.0, 0.25]]])
    assert accumulate(drop_pruned(scores, keep), step).tolist() == [[[1.5, float("-inf"), 3.25]]]


def test_protect_sinks_uses_the_dtype_max():
    for dtype in (torch.float32, torch.float16):
        scores = protect_sinks(torch.zeros(2, 6, dtype=dtype), 3)
        assert (scores[:, :3] == torch.finfo(dtype).max).all() and (scores[:, 3:] == 0).all()
    assert (protect_sinks(torch.zeros(2, 6), 0) == 0).all()  # sink_len 0: no protection


def test_value_weighting_uses_the_l1_norm_over_head_dim():
    values = torch.tensor([[[1.0, -2.0], [0.5, 0.5]]])  # (kv_heads=1, n=2, d=2)
    assert value_l1_norm(values).tolist() == [[3.0, 1.0]]


def test_gqa_grouping_is_identity_for_mha_and_a_group_mean_otherwise():
    scores = torch.rand(6, 5)
    assert group_to_kv_heads(scores, 6) is scores
    grouped = group_to_kv_heads(scores, 2)  # heads 0-2 -> kv head 0, 3-5 -> kv head 1
    torch.testing.assert_close(grouped, torch.stack([scores[:3].mean(0), scores[3:].mean(0)]))
    batched = group_to_kv_heads(torch.stack([scores, 2 * scores]), 2)  # (B, heads, n) too
    torch.testing.assert_close(batched, torch.stack([grouped, group_to_kv_heads(2 * scores, 2)]))


@pytest.mark.parametrize("bad", [{"heavy_ratio": 0.0}, {"heavy_ratio": 1.5}, {"sink_len": -1}, {"method": "nope"},
                                 {"backend": "nope"}, {"scoring": "nope"}, {"chunk_size": 0}, {"sink_len": 2.5},
                                 {"sink_len": True}, {"heavy_ratio": "0.25"}, {"chunk_size": 64.0}, {"apval": 1}])
def test_config_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        VatpConfig(**bad)


def test_config_defaults_and_resolved_scoring():
    cfg = VatpConfig(heavy_ratio=0.25, apval=True)
    assert (cfg.method, cfg.apval, cfg.sink_len, cfg.resolved_scoring) == ("h2o", True, 0, "eager")
    assert VatpConfig(backend="evict").resolved_scoring == "chunked"


def test_streaming_budget_is_sinks_plus_recent_with_the_h2o_total():
    streaming = get_method("streaming")
    assert streaming.budget(150, 0.25, 4) == Budget(heavy=4, recent=70)
    assert streaming.budget(150, 0.25, 4).total == get_method("h2o").budget(150, 0.25).total
    with pytest.raises(BudgetError, match="exceeds the whole budget"):
        streaming.checked_budget(48, 0.02, 4, True)
