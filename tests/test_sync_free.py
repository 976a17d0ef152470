"""Every method, with and without VATP and AdaKV, both backends, on a left-padded batch with a budget per row: the
layer's decode step has no host sync and traces into one graph.

* ``torch.compile(fullgraph=True)`` of the session's decode step: a branch on tensor data (``bool(tensor)``)
  or an untraceable op there is a graph break, which fullgraph turns into an error. The traced step runs
  dynamo's eager backend here (what is proven is the trace; inductor's code generation is
  tests/test_compile.py's, on fewer variants), and it must decode the eager tokens;
* the eager step, under bench/host_syncs.py's counter (aten ops that read device data, copies between
  devices, and the Python-level reads that dispatch nothing on CPU, such as ``.tolist()`` and ``int()``,
  which dynamo may trace by specialising on the value): no sync at all, and the whole model's decode step
  has no more syncs than the full cache's.

On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` checks the same of the whole decode step.
"""
import importlib.util

import pytest
import torch

import vatp
from conftest import REPO, method_variants, tiny_llama, variant_id

spec = importlib.util.spec_from_file_location("host_syncs", REPO / "bench" / "host_syncs.py")
host_syncs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_syncs)

DECODE_STEPS = ("_decode", "_decode_kept")  # the session's per-layer decode steps, as it calls them
LENGTHS, STEPS = (120, 100, 110), 6  # budgets of 2 * int(0.35 * L): 84, 70, 76 tokens


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_heads=4, num_kv_heads=2, hidden=64)


def _batch():
    prompts = [torch.randint(1, 128, (n,), generator=torch.Generator().manual_seed(n)) for n in LENGTHS]
    width = max(LENGTHS)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    mask = (torch.arange(width) >= width - torch.tensor(LENGTHS)[:, None]).long()
    return ids, mask


def _generate(model, **settings):
    ids, mask = _batch()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                             pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def _counted_syncs(model, **settings):
    """Host syncs inside vatp's decode steps (per call), and in the whole model's decode-step forwards."""
    inner, outer = [], []

    def counting(step):
        def counted(*args):
            with host_syncs.HostSyncCounter() as counter:
                out = step(*args)
            inner.append(counter.syncs)
            return out
        return counted

    def before(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            module._counter = host_syncs.HostSyncCounter().__enter__()

    def after(module, args, kwargs, output):
        if getattr(module, "_counter", None) is not None:
            module._counter.__exit__(None, None, None)
            outer.append(module._counter.syncs)
            module._counter = None

    hooks = [model.register_forward_pre_hook(before, with_kwargs=True),
             model.register_forward_hook(after, with_kwargs=True)]
    try:
        if settings:
            with vatp.enabled(model, **settings) as session:
                for name in DECODE_STEPS:
                    setattr(session, name, counting(getattr(session, name)))
                _generate(model)
        else:
            _generate(model)
    finally:
        for hook in hooks:
            hook.remove()
    return inner, outer


@pytest.mark.parametrize("backend", ["mask", "evict"])
@pytest.mark.parametrize("variant", method_variants(), ids=variant_id)
def test_the_decode_step_traces_into_one_graph_and_decodes_the_eager_tokens(model, variant, backend):
    method, apval, adakv = variant
    settings = dict(method=method, apval=apval, adakv=adakv, heavy_ratio=0.35, sink_len=2, backend=backend)
    with vatp.enabled(model, **settings):
        eager = _generate(model)
    torch._dynamo.reset()
    with vatp.enabled(model, **settings) as session:
        for name in DECODE_STEPS:  # fullgraph: a graph break (a host sync among them) raises
            setattr(session, name, torch.compile(getattr(session, name), fullgraph=True, backend="eager"))
        assert _generate(model) == eager


@pytest.mark.parametrize("backend", ["mask", "evict"])
@pytest.mark.parametrize("variant", method_variants(), ids=variant_id)
def test_the_decode_step_makes_the_host_wait_nowhere(model, variant, backend):
    method, apval, adakv = variant
    inner, outer = _counted_syncs(model, method=method, apval=apval, adakv=adakv, heavy_ratio=0.35, sink_len=2,
                                  backend=backend)
    assert len(inner) == (STEPS - 1) * model.config.num_hidden_layers and set(inner) == {0}
    _, full = _counted_syncs(model)
    assert max(outer) <= min(full), (outer, full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["mask", "evict"])
@pytest.mark.parametrize("variant", [("h2o", True, False), ("tova", True, False), ("snapkv", True, True)],
                         ids=variant_id)
def test_on_a_gpu_the_decode_step_never_waits_for_the_device(variant, backend):
    """torch.cuda.set_sync_debug_mode("error") raises at any synchronising call in vatp's decode steps."""
    method, apval, adakv = variant
    model = tiny_llama(num_heads=4, num_kv_heads=2, hidden=64).cuda()
    ids, mask = (t.cuda() for t in _batch())

    def strict(step):
        def checked(*args):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return step(*args)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return checked

    with vatp.enabled(model, method=method, apval=apval, adakv=adakv, heavy_ratio=0.35, sink_len=2,
                      backend=backend) as session, torch.no_grad():
        for name in DECODE_STEPS:
            setattr(session, name, strict(getattr(session, name)))
        model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                       pad_token_id=0)
