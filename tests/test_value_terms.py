"""VATP's value-term options against their definitions, read from a plain eager forward with no vatp code.

``value_norm`` (``l1``, ``l2``, ``wo_l1``), ``epsilon`` and ``two_stage``: the kept sets after a SnapKV prompt,
and every score H2O decides on at layer 0, prompt and decode steps, are the definitions'; each option decides
alike on both backends, a batch as each row alone, and in continuous batching as ``generate``; CriticalKV is the
modifier with its settings. The paper's defaults are the parity fixtures' (tests/test_parity.py).
"""
import pytest
import torch

import test_engine
import test_sync_free
import vatp
from conftest import eager_forward, greedy, recorded_decisions, tiny_llama
from test_batch import _generate, _left_padded, _prompts
from test_peers import _top
from test_snapkv import WINDOW, direct_scores
from vatp.value_terms import output_weight, value_norms

RATIO, SINKS, LENGTH = 0.3, 3, 150
TOTAL = 2 * int(RATIO * LENGTH)  # SnapKV's budget: 90 tokens, 58 before the window
OPTIONS = [dict(value_norm="l2"), dict(value_norm="wo_l1"), dict(epsilon=0.05), dict(two_stage=0.5),
           dict(value_norm="wo_l1", epsilon=0.01, two_stage=0.4)]
OPTION_IDS = ["l2", "wo_l1", "eps", "two-stage", "wo_l1+eps+two-stage"]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_heads=6, num_kv_heads=3, hidden=96, layers=3)


def _ids(n=LENGTH, seed=11):
    return torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def _norms(model, values, layer, kind):
    """(kv_heads, n) the value term of values (kv_heads, n, d), straight from its definition."""
    if kind == "l1":
        return values.abs().sum(dim=-1)
    if kind == "l2":
        return values.pow(2).sum(dim=-1).sqrt()
    o_proj = model.model.layers[layer].self_attn.o_proj.weight  # (hidden, heads * d): head h reads columns h*d..
    kv_heads, d = values.shape[0], values.shape[-1]
    group = o_proj.shape[1] // d // kv_heads
    return torch.stack([(values[h // group] @ o_proj[:, h * d:(h + 1) * d].T).abs().sum(dim=-1)
                        for h in range(kv_heads * group)]).view(kv_heads, group, -1).mean(dim=1)


def test_the_value_terms_are_their_definitions_for_a_prompt_and_for_one_token(model):
    values = torch.randn(2, 3, 40, 16)  # (B, kv_heads, n, d)
    module = model.model.layers[1].self_attn
    weight = output_weight(module, 3, 16)
    for kind in ("l1", "l2", "wo_l1"):
        expected = torch.stack([_norms(model, v, 1, kind) for v in values])
        assert torch.allclose(value_norms(values, kind, weight), expected, rtol=1e-5), kind
        one = value_norms(values[:, :, 5:6], kind, weight)  # a decode step's token takes the batched product
        assert torch.allclose(one, expected[:, :, 5:6], rtol=1e-5), kind


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_snapkv_keeps_the_best_of_each_options_score(model, options):
    """(s + epsilon) * norm over SnapKV's scores s, the sinks kept; with two_stage, its share of the budget goes to
    the best s first (the window counts in it)."""
    ids = _ids()
    with vatp.enabled(model, method="snapkv", apval=True, heavy_ratio=RATIO, sink_len=SINKS, **options) as session, \
            torch.no_grad():
        model(ids)
        kept = [[set(head) for head in session.layers[i].kept_positions()] for i in sorted(session.layers)]
    out = eager_forward(model, ids)
    prefix, kind = LENGTH - WINDOW, options.get("value_norm", "l1")
    first = max(int(options.get("two_stage", 0) * TOTAL) - WINDOW, 0)
    for layer, snap in enumerate(direct_scores(model, ids, apval=False, sink_len=0)):  # (kv_heads, prefix)
        norms = _norms(model, out.past_key_values.layers[layer].values[0, :, :prefix], layer, kind)
        for head in range(3):
            forced = _top(snap[head], first) | set(range(SINKS))
            scores = ((snap[head] + options.get("epsilon", 0)) * norms[head]).index_fill(
                0, torch.tensor(sorted(forced)), -1.0)
            expected = forced | _top(scores, TOTAL - WINDOW - len(forced)) | set(range(prefix, LENGTH))
            assert kept[layer][head] == expected, (layer, head)


@pytest.mark.parametrize("kind", ["l1", "l2", "wo_l1"])
def test_h2o_decides_on_accumulated_attention_plus_epsilon_times_the_value_term_at_every_step(model, kind):
    """Layer 0's queries, keys and values depend only on the tokens, so its attention over what vatp keeps is the
    plain model's renormalised over it: every score H2O decides on there, at the prompt and at each decode step,
    is ``(attention summed over the queries that saw the token + epsilon) * norm``, a new token entering with
    ``epsilon * norm``."""
    ids, steps, epsilon = _ids(60), 10, 0.05
    kept = []
    with vatp.enabled(model, method="h2o", apval=True, heavy_ratio=0.2, sink_len=SINKS, value_norm=kind,
                      epsilon=epsilon) as session, recorded_decisions() as decisions:
        hook = model.lm_head.register_forward_hook(lambda *_: kept.append(session.layers[0].kept_positions()))
        try:
            tokens, _ = greedy(model, ids, steps)
        finally:
            hook.remove()
    full = torch.cat([ids, torch.tensor([tokens[:-1]])], dim=1)
    out = eager_forward(model, full)
    attn = out.attentions[0][0]  # (heads, N, N), the plain model's layer 0
    norms = _norms(model, out.past_key_values.layers[0].values[0], 0, kind)  # (kv_heads, N)
    length, layers = ids.shape[1], model.config.num_hidden_layers
    summed = attn[:, :length, :length].sum(dim=1).view(3, 2, length).mean(dim=1)  # (kv_heads, L), the prompt's
    summed = torch.nn.functional.pad(summed, (0, full.shape[1] - length))
    attended = [set(range(length))] * 3
    for step in range(steps):
        decided = decisions[step * layers][0]  # (kv_heads, tokens so far), -inf where not attended
        if step:
            query = length + step - 1
            for head in range(3):
                seen = sorted(attended[head] | {query})
                probs = attn[2 * head:2 * head + 2, query, seen]
                summed[head, seen] += (probs / probs.sum(dim=-1, keepdim=True)).mean(dim=0)  # GQA group mean
        for head in range(3):
            seen = sorted(attended[head] | ({length + step - 1} if step else set()))
            assert torch.isinf(decided[head]).sum() == decided.shape[1] - len(seen)
            assert (decided[head, :SINKS] == torch.finfo(torch.float32).max).all()  # the sinks stay on top
            rest = [p for p in seen if p >= SINKS]
            expected = (summed[head, rest] + epsilon) * norms[head, rest]
            assert torch.allclose(decided[head, rest], expected, rtol=1e-5), (step, head)
        attended = [set(h) for h in kept[step]]


def test_criticalkv_is_snapkv_weighted_by_its_value_term_with_its_epsilon_and_first_stage(model):
    """CriticalKV adds 1e-4 to the window's mean attention, SnapKV's sum over its 32 queries divided by 32: the
    modifier with epsilon 32e-4 ranks alike (the two differ by a power of 2), and keeps no sinks."""
    ids = _ids()
    kept = {}
    for name, settings in {"criticalkv": dict(method="criticalkv"),
                           "modifier": dict(method="snapkv", apval=True, value_norm="wo_l1", epsilon=32e-4,
                                            two_stage=0.5, sink_len=0)}.items():
        with vatp.enabled(model, **{"heavy_ratio": RATIO, **settings}) as session, torch.no_grad():
            model(ids)
            kept[name] = [session.layers[i].kept_positions() for i in sorted(session.layers)]
    assert kept["modifier"] == kept["criticalkv"]


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("method", ["h2o", "snapkv"])
def test_each_option_decides_alike_on_both_backends_and_a_batch_as_each_row_alone(options, method):
    model = tiny_llama(num_heads=6, num_kv_heads=2, hidden=96)
    prompts = _prompts([150, 57, 95])
    tokens = {}
    for backend in ("mask", "evict"):
        settings = dict(method=method, apval=True, heavy_ratio=0.35, sink_len=4, backend=backend, **options)
        with vatp.enabled(model, **settings):
            alone = [_generate(model, p[None], torch.ones(1, len(p), dtype=torch.long))[0] for p in prompts]
            tokens[backend] = _generate(model, *_left_padded(prompts))
        assert tokens[backend] == alone, backend
    assert tokens["mask"] == tokens["evict"]


def test_the_engine_follows_the_options_as_generate_does():
    """Prompts in chunks of 24 and requests decoding together, each as ``generate`` decodes it alone."""
    settings = dict(method="h2o", apval=True, heavy_ratio=0.3, sink_len=2, value_norm="wo_l1", epsilon=0.05,
                    two_stage=0.3)
    texts = test_engine.prompts((37, 120, 310, 64))
    with vatp.enabled(test_engine.model(), backend="evict", **settings):
        alone = [test_engine.generate(text) for text in texts]
    assert test_engine.batch(texts, test_engine.config(max_batch_tokens=24), **settings) == alone


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_the_projected_value_and_epsilon_keep_the_decode_step_one_graph_without_a_sync(backend):
    """A new token's ``||W_o v||_1`` and its entry score are computed on the device like the rest of the step."""
    model = test_sync_free.tiny_llama(num_heads=4, num_kv_heads=2, hidden=64)
    settings = dict(method="h2o", apval=True, heavy_ratio=0.35, sink_len=2, backend=backend, value_norm="wo_l1",
                    epsilon=0.05)
    with vatp.enabled(model, **settings):
        eager = test_sync_free._generate(model)
    torch._dynamo.reset()
    with vatp.enabled(model, **settings) as session:
        session._decode = torch.compile(session._decode, fullgraph=True, backend="eager")
        assert test_sync_free._generate(model) == eager
    inner, _ = test_sync_free._counted_syncs(model, **settings)
    assert len(inner) == (test_sync_free.STEPS - 1) * model.config.num_hidden_layers and set(inner) == {0}


@pytest.mark.parametrize("settings,message", [
    (dict(apval=True, value_norm="l3"), "value_norm"),
    (dict(apval=True, epsilon=-0.1), "epsilon must be"),
    (dict(apval=True, two_stage=1.0), "two_stage must be"),
    (dict(apval=False, epsilon=0.1), "options of VATP"),
])
def test_options_it_cannot_follow_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        vatp.VatpConfig(method="h2o", **settings)
