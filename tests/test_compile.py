"""The decode step under torch.compile: vatp's attention call with fullgraph=True, the whole model's decode
step with no graph break, the same tokens as eager; CUDA graphs where there is a GPU."""
import pytest
import torch

import vatp
from conftest import greedy, tiny_llama

pytestmark = pytest.mark.slow  # compiles (tens of seconds on a CPU)

VARIANTS = [dict(method="h2o", apval=True), dict(method="scissorhands"), dict(method="tova", apval=True),
            dict(method="snapkv", apval=True)]
IDS = ["h2o+vatp", "scissorhands", "tova+vatp", "snapkv+vatp"]


def _prompt(n, seed=7):
    return torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_heads=4, num_kv_heads=2, layers=2)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_the_compiled_decode_step_gives_the_eager_tokens(model, variant):
    """VatpConfig(compile=...) compiles each layer's decode step with fullgraph=True (a graph break would raise):
    one graph serves every layer, and a second prompt length compiles once more, then no more."""
    from torch._dynamo.utils import counters

    settings = dict(heavy_ratio=0.25, sink_len=2, backend="evict", **variant)
    prompts = [_prompt(80), _prompt(96, seed=8), _prompt(88, seed=9)]
    with vatp.enabled(model, **settings):
        eager = [greedy(model, ids, 12) for ids in prompts]
    torch._dynamo.reset()
    counters.clear()
    with vatp.enabled(model, compile="default", **settings):
        compiled = [greedy(model, ids, 12) for ids in prompts]
    for (tokens, logits), (ours, our_logits) in zip(eager, compiled):
        assert ours == tokens
        torch.testing.assert_close(our_logits, logits, rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] <= 2  # static shapes, then one dynamic graph for other lengths


def _decode_explanation(model, **settings):
    """torch._dynamo.explain of the whole model's second decode step (the first after the prompt's)."""
    ids = _prompt(80)
    context = vatp.enabled(model, **settings) if settings else torch.no_grad()
    with context, torch.no_grad():
        out = model(ids, attention_mask=torch.ones_like(ids))
        step = out.logits[:, -1:].argmax(-1)
        out = model(step, attention_mask=torch.ones(1, 81, dtype=torch.long), past_key_values=out.past_key_values,
                    position_ids=torch.tensor([[80]]))
        step = out.logits[:, -1:].argmax(-1)
        return torch._dynamo.explain(model)(step, attention_mask=torch.ones(1, 82, dtype=torch.long),
                                            past_key_values=out.past_key_values, position_ids=torch.tensor([[81]]))


@pytest.mark.parametrize("backend", ["evict", "mask"])
def test_the_whole_models_decode_step_has_no_graph_break_where_transformers_has_none(model, backend):
    full = _decode_explanation(model)
    assert full.graph_break_count == 0  # transformers' own Llama decode step: one graph
    for variant in VARIANTS:
        ours = _decode_explanation(model, heavy_ratio=0.25, sink_len=2, backend=backend, **variant)
        assert (ours.graph_count, ours.graph_break_count) == (1, 0), (variant, ours.break_reasons)


def test_the_whole_model_compiled_for_decoding_gives_the_eager_tokens(model):
    """A hand-written decode loop: the prompt eager, then every step through torch.compile(model, fullgraph=True)."""
    settings = dict(heavy_ratio=0.25, sink_len=2, backend="evict", method="h2o", apval=True)
    ids, steps = _prompt(80), 10

    def decode(forward):
        tokens = []
        with vatp.enabled(model, **settings), torch.no_grad():
            out = model(ids, attention_mask=torch.ones_like(ids))
            for i in range(steps):
                tokens.append(out.logits[:, -1:].argmax(-1))
                out = forward(tokens[-1], attention_mask=torch.ones(1, 81 + i, dtype=torch.long),
                              past_key_values=out.past_key_values, position_ids=torch.tensor([[80 + i]]))
        return [int(t) for t in tokens]

    torch._dynamo.reset()
    assert decode(torch.compile(model, fullgraph=True)) == decode(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_give_the_eager_tokens():
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=2).cuda()
    ids = _prompt(200).cuda()
    settings = dict(heavy_ratio=0.25, sink_len=2, backend="evict", method="h2o", apval=True)
    with vatp.enabled(model, **settings):
        eager = greedy(model, ids, 20)
    torch._dynamo.reset()
    with vatp.enabled(model, compile="reduce-overhead", **settings):
        graphs = greedy(model, ids, 20)
    assert graphs[0] == eager[0]
    torch.testing.assert_close(graphs[1], eager[1], rtol=1e-3, atol=1e-3)
