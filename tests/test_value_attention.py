"""vatp.analysis.value_attention: measured against the model's own eager attention and cache, on known answers."""
import json

import matplotlib.image
import pytest
import torch

import vatp
from conftest import eager_forward, tiny_llama
from vatp.analysis import probe, value_attention
from vatp.analysis.figures import default_prompt

HEADS, KV_HEADS, LAYERS, L = 4, 2, 3, 40


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_heads=HEADS, num_kv_heads=KV_HEADS, layers=LAYERS, seed=1)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 128, (1, L), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(model, ids):
    """Column sums of the eager attention the model returns (mean per GQA group) and the cache's value L1 norms."""
    out = eager_forward(model, ids)
    group = HEADS // KV_HEADS
    scores = torch.stack([a[0].sum(dim=-2).view(KV_HEADS, group, L).mean(dim=1) for a in out.attentions])
    norms = torch.stack([layer.values[0].abs().sum(dim=-1) for layer in out.past_key_values.layers])
    return scores, norms  # (LAYERS, KV_HEADS, L) each


def test_measure_matches_eager_attention_and_the_cache(model, ids, reference):
    scores, norms = value_attention.measure(model, ids, list(range(LAYERS)))
    assert scores.shape == norms.shape == (LAYERS, KV_HEADS, L) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference[0])
    torch.testing.assert_close(norms, reference[1])
    # Every query's probabilities sum to 1, so each KV head's scores sum to L.
    torch.testing.assert_close(scores.sum(dim=-1), torch.full((LAYERS, KV_HEADS), float(L)))


def test_measure_of_some_layers_is_their_rows(model, ids, reference):
    scores, norms = value_attention.measure(model, ids, [2, 0])
    torch.testing.assert_close(scores, reference[0][[2, 0]])
    torch.testing.assert_close(norms, reference[1][[2, 0]])


def hooks(model):
    """Every forward hook in the model (output_attentions=True leaves transformers' own recording hooks)."""
    return [(name, dict(m._forward_hooks)) for name, m in model.named_modules() if m._forward_hooks]


def test_measure_leaves_the_model_as_it_was(model, ids):
    before = model.config._attn_implementation, hooks(model)
    value_attention.measure(model, ids, [1])
    assert (model.config._attn_implementation, hooks(model)) == before


def test_measure_refuses_bad_layers_and_enabled_models(model, ids):
    before = hooks(model)
    with pytest.raises(ValueError, match=f"layer {LAYERS} out of range"):
        value_attention.measure(model, ids, [0, LAYERS])
    with pytest.raises(ValueError, match="no layers"):
        value_attention.measure(model, ids, [])
    assert hooks(model) == before
    with vatp.enabled(model, heavy_ratio=0.25):
        with pytest.raises(ValueError, match="VATP-enabled"):
            value_attention.measure(model, ids, [0])


def test_ranks_average_ties():
    assert value_attention.ranks(torch.tensor([30.0, 10.0, 20.0, 20.0])).tolist() == [4.0, 1.0, 2.5, 2.5]


def test_spearman_known_answers():
    x = torch.randn(200, generator=torch.Generator().manual_seed(0))
    assert value_attention.spearman(x, 3 * x.exp() + 1) == pytest.approx(1.0)
    assert value_attention.spearman(x, -x.pow(3)) == pytest.approx(-1.0)
    assert value_attention.spearman(torch.arange(5.0), torch.tensor([1.0, 2.0, 3.0, 5.0, 4.0])) == pytest.approx(0.9)
    assert torch.isnan(torch.tensor(value_attention.spearman(x, torch.ones(200))))
    with pytest.raises(ValueError, match="same n"):
        value_attention.spearman(x, x[:10])


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 10, (300,), generator=g).float(), torch.randn(300, generator=g)
    y = y + 0.3 * x
    assert value_attention.spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)


def test_first_share():
    scores = torch.tensor([[4.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(value_attention.first_share(scores, 1), torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(value_attention.first_share(scores, 4), torch.ones(2))


def test_layer_stats_on_made_up_scores():
    # Attention falls with position, value norms rise: ranks exactly reversed, both prompts, both heads.
    scores = [torch.linspace(2, 1, n).expand(2, n) for n in (30, 50)]
    norms = [torch.linspace(1, 3, n).expand(2, n) for n in (30, 50)]
    stats = value_attention.layer_stats(scores, norms, sink_lens=(4, 20))
    assert stats["spearman"] == pytest.approx(-1.0)
    assert stats["spearman_after_sinks"] == pytest.approx(-1.0)
    assert stats["spearman_per_kv_head"] == pytest.approx([-1.0, -1.0])
    for k in (4, 20):
        expected = [float(value_attention.first_share(s[:1], k)) for s in scores]
        assert stats["share"][str(k)]["attention"] == pytest.approx(sum(expected) / 2)
    assert stats["share"]["20"]["value_norm"] < 20 / 30
    assert stats["top_token_positions"] == [0, 0, 0, 0] and stats["top_token_value_percentile"] == 0.0


def test_top_token():
    scores = torch.tensor([[0.1, 0.2, 3.0, 0.4, 0.3], [5.0, 0.2, 0.1, 0.4, 0.3]])
    norms = torch.tensor([[1.0, 2.0, 4.0, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    positions, percentile = value_attention.top_token(scores, norms)
    assert positions.tolist() == [2, 0]
    torch.testing.assert_close(percentile, torch.tensor([0.6, 0.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def measured(model):
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 128, (1, n), generator=g) for n in (30, 45)]
    return [value_attention.measure(model, p, list(range(LAYERS))) for p in prompts]


def test_figures_and_report(measured, tmp_path):
    layers = list(range(LAYERS))
    stats = value_attention.all_layer_stats(layers, measured)
    assert [s["layer"] for s in stats] == layers and set(stats[0]["share"]) == {"4", "20"}
    grid = value_attention.layers_figure(layers, measured, stats)
    titles = [ax.get_title() for ax in grid.axes if ax.get_title()]
    assert titles == [f"layer {i}: ρ = {s['spearman']:.2f}" for i, s in zip(layers, stats)]
    summary = value_attention.summary_figure(stats)
    for name, fig in (("grid", grid), ("summary", summary)):
        fig.savefig(tmp_path / f"{name}.png", dpi=50)
        assert matplotlib.image.imread(tmp_path / f"{name}.png").shape[0] > 100
    top = value_attention.headline(stats)
    assert top["spearman"]["min"] == min(s["spearman"] for s in stats)
    report = {"model": "tiny", "command": "python -m x", "device": "cpu", "seconds": 1.0, "headline": top,
              "prompts": [{"task": "t", "sample": 0, "tokens": 30}], "layers": stats}
    text = value_attention.markdown(report)
    assert "`python -m x`" in text and text.count("\n| ") == LAYERS + 1
    assert "an even share would be 13.3%" in text  # 4 of 30 tokens


def test_cli_writes_png_json_markdown(model, monkeypatch, tmp_path):
    g = torch.Generator().manual_seed(3)
    monkeypatch.setattr("vatp.longbench.models.load_model_and_tokenizer", lambda *args: (model, None))
    monkeypatch.setattr(value_attention, "suite_prompts", lambda tokenizer, name, max_length, count, tokens, tasks: [
        ("offline_qa", i, torch.randint(0, 128, (1, 25 + i), generator=g)) for i in range(count)])
    out = tmp_path / "va"
    assert value_attention.main(["--prompts", "2", "--tokens", "300", "--layers", "0", "2", "--out", str(out)]) == 0
    report = json.loads((out / "value_attention.json").read_text())
    assert [p["tokens"] for p in report["prompts"]] == [25, 26]
    assert [s["layer"] for s in report["layers"]] == [0, 2]
    assert report["command"] == ("python -m vatp.analysis.value_attention --prompts 2 --tokens 300 "
                                 f"--layers 0 2 --out {out}")
    assert report["command"] in (out / "value_attention.md").read_text()
    for stem in ("value_attention_layers", "value_attention_summary"):
        assert (out / f"{stem}.png").stat().st_size > 5000


def test_cli_refuses_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        value_attention.parse_args(["--prompts", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        value_attention.parse_args(["--sink_lens", "20", "4", "--out", str(tmp_path)])


def test_embedded_measure_matches_probe(embedded):
    model, tokenizer = embedded
    ids = probe.encode(tokenizer, default_prompt())
    scores, norms = value_attention.measure(model, ids, [0, 2])
    kv_heads = model.config.num_key_value_heads
    for i, layer in enumerate((0, 2)):
        probs = probe.attention_probs(model, ids, layer)  # (heads, L, L)
        torch.testing.assert_close(scores[i], vatp.policy.group_to_kv_heads(probs.sum(dim=1), kv_heads))
        torch.testing.assert_close(norms[i], probe.value_norms(model, ids, layer))
    prompts = value_attention.suite_prompts(tokenizer, "smollm2-135m-instruct", 7500, 4, 300)
    assert [(t, i) for t, i, _ in prompts] == [("offline_qa", 0), ("offline_retrieval", 0), ("offline_code", 0),
                                               ("offline_qa", 1)]
    assert all(200 < p.shape[1] < 600 for _, _, p in prompts)


def test_measure_of_the_projected_value_term_is_its_definition(model, ids):
    """||W_o^h v||_1 from the cache's values and o_proj's columns of query head h, the mean over each GQA group."""
    _, projected = value_attention.measure(model, ids, [0, 2], "wo_l1")
    values = eager_forward(model, ids).past_key_values
    group, d = HEADS // KV_HEADS, model.config.head_dim
    for i, layer in enumerate((0, 2)):
        o_proj = model.model.layers[layer].self_attn.o_proj.weight
        expected = torch.stack([(values.layers[layer].values[0, h // group] @ o_proj[:, h * d:(h + 1) * d].T)
                                .abs().sum(dim=-1) for h in range(HEADS)]).view(KV_HEADS, group, L).mean(dim=1)
        torch.testing.assert_close(projected[i], expected)
    with pytest.raises(ValueError, match="unknown value_norm 'l3'"):
        value_attention.measure(model, ids, [0], "l3")


def test_projected_values_on_made_up_terms():
    """A term that is a multiple of the other ranks alike and keeps the same tokens; a reversed one does not."""
    from vatp.analysis import projected_values

    attention = torch.ones(1, 2, 40)  # (layers, kv_heads, L): attention alike, so the terms decide
    l1 = torch.arange(1.0, 41.0).expand(1, 2, 40)
    same = {"attention": attention, "l1": l1, "wo_l1": 3 * l1}
    stats = projected_values.layer_stats([same], 0)
    assert stats["spearman"] == pytest.approx(1.0) and stats["spearman_after_sinks"] == pytest.approx(1.0)
    assert stats["kept_agreement"] == {"0.2": 1.0, "0.5": 1.0}
    assert stats["share"]["4"]["l1"] == pytest.approx(stats["share"]["4"]["wo_l1"]) == pytest.approx(10 / 820)
    reversed_ = projected_values.layer_stats([{**same, "wo_l1": l1.flip(-1)}], 0)
    assert reversed_["spearman"] == pytest.approx(-1.0)
    assert reversed_["kept_agreement"] == {"0.2": 0.0, "0.5": 0.0}  # the 8 (20) largest against the 8 (20) smallest
    almost = l1.clone()
    almost[..., [0, 39]] = almost[..., [39, 0]]  # the best and the worst token swap
    assert projected_values.layer_stats([{**same, "wo_l1": almost}], 0)["kept_agreement"]["0.2"] == 7 / 8


def test_projected_values_cli_writes_png_json_markdown(model, monkeypatch, tmp_path):
    from vatp.analysis import projected_values

    g = torch.Generator().manual_seed(3)
    monkeypatch.setattr("vatp.longbench.models.load_model_and_tokenizer", lambda *args: (model, None))
    monkeypatch.setattr(value_attention, "suite_prompts", lambda tokenizer, name, max_length, count, tokens, tasks: [
        ("offline_qa", i, torch.randint(0, 128, (1, 25 + i), generator=g)) for i in range(count)])
    out = tmp_path / "pv"
    assert projected_values.main(["--prompts", "2", "--layers", "0", "2", "--out", str(out)]) == 0
    report = json.loads((out / "projected_values.json").read_text())
    assert report["layer_ids"] == [0, 2] and len(report["layers"]) == 2
    text = (out / "projected_values.md").read_text()
    assert "python -m vatp.analysis.projected_values --prompts 2" in text and text.count("\n| ") == 3
    assert (out / "projected_values.png").stat().st_size > 5000


@pytest.mark.parametrize("tool", ["value_attention", "projected_values"])
def test_a_model_that_does_not_load_is_one_line_and_status_2(tool, monkeypatch, capsys, tmp_path):
    import importlib

    from vatp.longbench.models import ModelLoadError

    def refuse(*args):
        raise ModelLoadError("no weights at /nowhere")

    monkeypatch.setattr("vatp.longbench.models.load_model_and_tokenizer", refuse)
    assert importlib.import_module(f"vatp.analysis.{tool}").main(["--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"{tool}: error: no weights at /nowhere\n"
    assert not (tmp_path / "x").exists()
