"""vatp.analysis.probe against the running method, and the figures CLI end to end, on the embedded SmolLM2."""
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

import vatp
from conftest import HANG_S, VARIANT_IDS, VARIANTS
from vatp import policy
from vatp.analysis import figures, probe
from vatp.analysis.figures import default_prompt
from vatp.methods import get_method

REPO = Path(__file__).resolve().parents[1]
LAYERS = [0, 2, 5]  # the first, the default, a deeper one (each call runs layers 0..layer only)
SINK_LEN = 4


@pytest.fixture(scope="module")
def ids(embedded):
    _, tokenizer = embedded
    return probe.encode(tokenizer, default_prompt())  # (1, ~350)


def test_figures_cli_writes_three_pngs(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(default_prompt()[:800], encoding="utf-8")
    out = tmp_path / "figs"
    done = subprocess.run([sys.executable, "-m", "vatp.analysis.figures", "--model", "smollm2-135m-instruct", "--layer", "2",
                           "--head", "4", "--prompt-file", str(prompt), "--heavy_ratio", "0.25", "--sink_len", "4",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    for stem in ("value_norms", "attention", "kept_tokens"):
        path = out / f"{stem}.png"
        assert path.stat().st_size > 5000, path
        height, width = matplotlib.image.imread(path).shape[:2]
        assert 500 <= width <= 2000 and 150 <= height <= 1500, (stem, width, height)
        assert f"wrote {path}" in done.stdout


def test_figures_cli_reports_a_missing_prompt_file(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert figures.main(["--prompt-file", str(missing), "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("figures: error:") and str(missing) in err
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_kept_tokens_hold_exactly_the_budget(embedded, ids, variant):
    model, _ = embedded
    n = ids.shape[1]
    budget = get_method("h2o" if variant["h2o"] else "scissorhands").budget(n, 0.25)
    for layer in LAYERS:
        kept = probe.kept_tokens(model, ids, layer, heavy_ratio=0.25, sink_len=SINK_LEN, **variant)
        assert kept.shape == (model.config.num_key_value_heads, n) and kept.dtype == torch.bool
        assert kept.sum(dim=1).tolist() == [budget.total] * kept.shape[0]
        assert kept[:, n - budget.recent:].all()
        if variant["apval"]:
            assert kept[:, :SINK_LEN].all()


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_full_budget_keeps_every_token(embedded, ids, variant):
    model, _ = embedded
    kept = probe.kept_tokens(model, ids, 2, heavy_ratio=1.0, sink_len=SINK_LEN, **{**variant, "h2o": True})
    assert kept.all()


def test_vatp_changes_which_tokens_are_kept(embedded, ids):
    model, _ = embedded
    h2o = probe.kept_tokens(model, ids, 2, heavy_ratio=0.25, h2o=True)
    vatp_kept = probe.kept_tokens(model, ids, 2, heavy_ratio=0.25, h2o=True, apval=True, sink_len=SINK_LEN)
    assert (h2o != vatp_kept).any()


def test_probs_and_norms_match_what_the_session_scores(embedded, ids):
    # At full budget nothing is pruned, so the session's H2O scores are the raw
    # column sums of the probabilities, grouped per KV head.
    model, _ = embedded
    layer = 2
    probs = probe.attention_probs(model, ids, layer)
    norms = probe.value_norms(model, ids, layer)
    n = ids.shape[1]
    assert probs.shape == (model.config.num_attention_heads, n, n) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(probs.shape[:2]))
    assert not probs.triu(diagonal=1).any()  # causal
    with vatp.enabled(model, heavy_ratio=1.0, h2o=True, apval=True, sink_len=0, backend="mask") as session:
        probe.forward_through(model, ids, layer, use_cache=True)
        state = session.layers[layer]
    kv_heads = model.config.num_key_value_heads
    torch.testing.assert_close(norms, state.token_values(state.norms))
    torch.testing.assert_close(policy.group_to_kv_heads(probs.sum(dim=1), kv_heads) * norms,
                               state.token_values(state.scores), rtol=1e-4, atol=1e-3)


def test_inspecting_leaves_the_model_as_it_was(embedded, ids):
    model, _ = embedded
    before = model.config._attn_implementation
    probe.attention_probs(model, ids, 1)
    probe.value_norms(model, ids, 1)
    probe.kept_tokens(model, ids, 1, heavy_ratio=0.25, h2o=True, apval=True, sink_len=SINK_LEN)
    assert model.config._attn_implementation == before
    assert vatp.session_of(model) is None
    assert not any(m._forward_hooks for m in model.modules())


def test_bad_arguments_are_refused(embedded, ids):
    model, _ = embedded
    with pytest.raises(ValueError, match="layer 30 out of range: the model has 30 layers"):
        probe.value_norms(model, ids, 30)
    with pytest.raises(ValueError, match="head 9 out of range: the model has 9 query heads"):
        probe.kv_head_of(model, 9)
    with pytest.raises(ValueError, match=r"input_ids must be \(1, L\)"):
        probe.attention_probs(model, ids[0], 0)
    assert [probe.kv_head_of(model, h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with vatp.enabled(model, heavy_ratio=0.25):
        with pytest.raises(ValueError, match="VATP-enabled"):
            probe.attention_probs(model, ids, 0)
