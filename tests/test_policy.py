"""The policy's pure functions: budgets, keep decision and its quirks, sinks, value weighting, GQA."""
import pytest
import torch

from vatp import VatpConfig
from vatp.methods import BudgetError, get_method
from vatp.policy import (Budget, accumulate, drop_pruned, group_to_kv_heads, keep_mask, protect_sinks,
                         value_l1_norm)


@pytest.mark.parametrize("ratio,length,heavy,recent", [(0.1, 150, 15, 15), (0.25, 150, 37, 37), (0.25, 520, 130, 130),
                                                      (0.02, 48, 0, 0)])
def test_h2o_budget(ratio, length, heavy, recent):
    assert get_method("h2o").budget(length, ratio) == Budget(heavy, recent)


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


def test_keep_mask_keeps_heavy_plus_recent_plus_the_incoming_slot():
    scores = torch.tensor([[5.0, 1.0, 4.0, 0.5, 3.0, 2.0, 0.1, 0.2, 0.3, 0.4]])  # K = 10
    keep = keep_mask(scores, Budget(heavy=2, recent=3))
    # top-2 of [0, 7) are positions 0 and 2; the 3 recent are 7..9; slot 10 is the next token;
    # position K - recent - ... : the paper's view quirk keeps K-recent = 7 as a recent one.
    assert keep[0].nonzero().flatten().tolist() == [0, 2, 7, 8, 9, 10]
    assert int(keep.sum()) == 2 + 3 + 1


def test_keep_mask_keeps_everything_within_budget_or_without_recent():
    scores = torch.rand(3, 8)
    assert keep_mask(scores, Budget(4, 4)).all()  # K == total
    assert keep_mask(scores, Budget(2, 0)).all()  # recent == 0: the paper's code prunes nothing


def test_keep_mask_with_zero_heavy_keeps_only_recent():
    keep = keep_mask(torch.rand(2, 10), Budget(heavy=0, recent=3))
    assert keep.sum(dim=1).tolist() == [4, 4]
    assert keep[:, -4:].all()


def test_drop_pruned_and_accumulate():
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    keep = torch.tensor([[True, False, True, True]])
    assert drop_pruned(scores, keep).tolist() == [[1.0, 0.0, 3.0]]
    assert accumulate(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.25, 0.25]])).tolist() == [[1.5, 2.25, 0.25]]


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


@pytest.mark.parametrize("bad", [{"heavy_ratio": 0.0}, {"heavy_ratio": 1.5}, {"sink_len": -1}, {"method": "nope"},
                                 {"backend": "nope"}, {"scoring": "nope"}, {"chunk_size": 0}])
def test_config_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        VatpConfig(**bad)


def test_config_from_paper_flags():
    cfg = VatpConfig.from_paper_flags(0.25, h2o=False, apval=True, sink_len=None)
    assert (cfg.method, cfg.apval, cfg.sink_len, cfg.resolved_scoring) == ("scissorhands", True, 0, "eager")
    assert VatpConfig(backend="evict").resolved_scoring == "chunked"


def test_streaming_budget_is_sinks_plus_recent_with_the_h2o_total():
    streaming = get_method("streaming")
    assert streaming.budget(150, 0.25, 4) == Budget(heavy=4, recent=70)
    assert streaming.budget(150, 0.25, 4).total == get_method("h2o").budget(150, 0.25).total
    with pytest.raises(BudgetError, match="exceeds the whole budget"):
        streaming.checked_budget(48, 0.02, 4, True)
