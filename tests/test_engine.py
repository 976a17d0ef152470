"""vatp inside transformers' continuous batching (vatp/engine): exact, blocks really freed, refusals before admission.

Every method with and without VATP: each request's greedy tokens equal ``model.generate`` with
``backend="evict"`` of its prompt alone (a prompt too short for the method's budget: the model's own, as the
engine keeps it whole), with several requests of 1 to 310 tokens at once, with the prompts split into chunks
of 24 tokens, and with requests arriving while others decode. Nothing pruned equals the engine's own
``paged|sdpa``. After every step the blocks in use plus the free ones are the pool, and a pruned request holds
its budget's blocks.
"""
import functools
import importlib.util
import logging

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.continuous_batching.scheduler import SCHEDULER_MAPPING

import vatp
from conftest import HANG_S, REPO, method_variants, tiny_llama, variant_id
from vatp.engine.engine import Engine
from vatp.refusals import UnsupportedError

spec = importlib.util.spec_from_file_location("host_syncs", REPO / "bench" / "host_syncs.py")
host_syncs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_syncs)

LENGTHS = (1, 37, 120, 310, 64)
NEW = 10
GENERATION = GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
SETTINGS = dict(heavy_ratio=0.3, sink_len=2)


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("ContinuousBatchingLogger").setLevel("ERROR")


@functools.cache
def model():
    return tiny_llama(num_heads=4, num_kv_heads=2, hidden=64)


def prompts(lengths=LENGTHS) -> list[list[int]]:
    return [torch.randint(1, 128, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in lengths]


def config(**settings):
    return vatp.engine_config(**{**dict(block_size=16, num_blocks=128, max_batch_tokens=512, max_requests_per_batch=8),
                                 **settings})


def generate(prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        return model().generate(ids, attention_mask=torch.ones_like(ids), generation_config=GENERATION)[0, len(prompt):].tolist()


@functools.cache
def alone(method: str, apval: bool, length: int) -> list[int]:
    """The prompt alone under model.generate with backend="evict", or the model's own tokens where vatp refuses its
    budget (the engine keeps such a prompt whole)."""
    prompt = prompts((length,))[0]
    try:
        with vatp.enabled(model(), method=method, apval=apval, backend="evict", **SETTINGS):
            return generate(prompt)
    except vatp.BudgetError:
        return generate(prompt)


def batch(texts, cb_config, **settings) -> list[list[int]]:
    with vatp.enabled(model(), **settings):
        out = model().generate_batch(texts, generation_config=GENERATION, continuous_batching_config=cb_config)
    assert not [o.error for o in out.values() if o.error]
    return [out[f"req_{i}"].generated_tokens for i in range(len(texts))]


@pytest.mark.parametrize("chunk", [512, 24], ids=["whole prompts", "chunks of 24"])
@pytest.mark.parametrize("variant", method_variants(adakv=(False,)), ids=variant_id)
def test_each_request_decodes_what_generate_decodes_for_it_alone(variant, chunk):
    method, apval, _ = variant
    cb = batch(prompts(), config(max_batch_tokens=chunk), method=method, apval=apval, **SETTINGS)
    assert cb == [alone(method, apval, n) for n in LENGTHS]


def test_nothing_pruned_decodes_what_the_engines_own_attention_decodes():
    cb = batch(prompts(), config(max_batch_tokens=24), method="h2o", apval=True, heavy_ratio=1.0, sink_len=2)
    out = model().generate_batch(prompts(), generation_config=GENERATION, continuous_batching_config=config(
        max_batch_tokens=24))  # vatp off: transformers' paged|sdpa
    assert cb == [out[f"req_{i}"].generated_tokens for i in range(len(LENGTHS))]
    assert model().config._attn_implementation == "sdpa"


def test_requests_arriving_while_others_decode():
    texts, outputs = prompts(), {}
    with vatp.enabled(model(), method="tova", apval=True, **SETTINGS):
        manager = model().init_continuous_batching(GENERATION, config(max_batch_tokens=24))
        manager.start()
        try:
            index = {manager.add_request(texts[i], max_new_tokens=NEW): i for i in (3, 1)}
            first = manager.get_result(timeout=HANG_S)  # the short one ends while the long one decodes
            outputs[first.request_id] = first
            index |= {manager.add_request(texts[i], max_new_tokens=NEW): i for i in (0, 2, 4)}
            while len(outputs) < len(index):
                result = manager.get_result(timeout=HANG_S)
                outputs[result.request_id] = result
        finally:
            manager.stop(block=True)
    assert {index[rid]: out.generated_tokens for rid, out in outputs.items()} == {
        i: alone("tova", True, n) for i, n in enumerate(LENGTHS)}


def test_blocks_in_use_and_free_make_the_pool_and_a_pruned_request_holds_its_budget(monkeypatch):
    seen = []
    original = Engine.before_step

    def counting(engine, scheduler):
        original(engine, scheduler)
        cache = scheduler.cache
        held = {rid: cache.blocks_in_use(rid) for rid in scheduler.active_requests}
        seen.append((held, cache.get_num_free_blocks(), {rid: t.held for rid, t in engine.tracked.items()}))

    monkeypatch.setattr(Engine, "before_step", counting)
    texts = prompts((200, 180, 220, 150, 190, 210))
    batch(texts, config(num_blocks=40), method="h2o", apval=True, heavy_ratio=0.1, sink_len=2)
    assert all(sum(held.values()) + free == 40 for held, free, _ in seen)  # no block leaks, at any step
    # After its prompt, a request holds its budget (2 * int(0.1 * L) + the incoming token) in blocks of 16, + 2 ahead.
    for held, _, slots in seen:
        for rid, blocks in held.items():
            if slots.get(rid) is not None:
                assert blocks <= (slots[rid] + 1) // 16 + 2, (rid, blocks, slots[rid])
    assert max(len(held) for held, _, _ in seen) == 6  # every request at once in 40 blocks


def test_the_pool_holds_more_requests_pruned_than_whole(monkeypatch):
    """The same 40-block pool and six prompts of 150-220 tokens: the full budget holds 3 requests at a time (each
    grows to 11-14 blocks of 16), a 20% budget all six (4 blocks each once its prompt is decided)."""
    counts, original = [], Engine.before_step

    def counting(engine, scheduler):
        original(engine, scheduler)
        counts[-1].append(len(scheduler.active_requests))

    monkeypatch.setattr(Engine, "before_step", counting)
    peaks = {}
    for ratio in (1.0, 0.1):
        counts.append([])
        batch(prompts((200, 180, 220, 150, 190, 210)), config(num_blocks=40), method="h2o", heavy_ratio=ratio)
        peaks[ratio] = max(counts[-1])
    assert peaks == {1.0: 3, 0.1: 6}


def test_a_pruned_decode_step_dispatches_the_same_ops_for_any_number_of_requests_and_never_syncs(monkeypatch):
    """Decode-only steps with 2 and with 6 deciding requests: the same aten ops in each layer's attention function,
    and no host sync there (the plain paged|sdpa attention has none either)."""
    from vatp.engine import attention

    counts = []
    original = attention.StepAttention.__call__

    def counted(self, query, key, value):
        if not self.plan.prefill and self.plan.pruned:
            with host_syncs.HostSyncCounter() as counter:
                out = original(self, query, key, value)
            counts.append((len(self.plan.pruned), (self.layer, counter.ops), counter.syncs))
            return out
        return original(self, query, key, value)

    monkeypatch.setattr(attention.StepAttention, "__call__", counted)
    for lengths in ((120, 90), (120, 90, 100, 110, 95, 130)):
        batch(prompts(lengths), config(), method="h2o", apval=True, **SETTINGS)
    by_size = {size: {ops for n, ops, _ in counts if n == size} for size in (2, 6)}  # {(layer, ops)}
    assert len(by_size[2]) == 2 and by_size[2] == by_size[6]  # the first layer also finds the step's pages
    assert {syncs for _, _, syncs in counts} == {0}


@pytest.mark.parametrize("settings,message", [
    (dict(allow_block_sharing=True), "allow_block_sharing=True"),
    (dict(use_cuda_graph=True), "CUDA graphs"),
    (dict(default_compile_level=1), "compiled step"),
    (dict(cpu_offload_space=1.0), "cpu_offload_space"),
    (dict(scheduler_type="no-such"), "scheduler_type"),
])
def test_a_config_vatp_cannot_follow_is_refused_before_anything_runs(settings, message):
    with vatp.enabled(model(), **SETTINGS), pytest.raises(UnsupportedError, match=message):
        model().generate_batch(prompts()[:2], generation_config=GENERATION, continuous_batching_config=config(**settings))


@pytest.mark.parametrize("settings,message", [
    (dict(method="snapkv", adakv=True), "drop adakv"),
    (dict(scoring="window"), "drop scoring"),
    (dict(compile="default"), "drop compile"),
])
def test_settings_the_engine_does_not_follow_are_refused(settings, message):
    with vatp.enabled(model(), **{**SETTINGS, **settings}), pytest.raises(UnsupportedError, match=message):
        model().generate_batch(prompts()[:2], generation_config=GENERATION, continuous_batching_config=config())


def test_forking_requests_are_refused():
    forked = GenerationConfig(max_new_tokens=NEW, do_sample=True, num_return_sequences=2, eos_token_id=None)
    with vatp.enabled(model(), **SETTINGS), pytest.raises(UnsupportedError, match="num_return_sequences"):
        model().generate_batch(prompts()[:2], generation_config=forked, continuous_batching_config=config())


def test_without_a_config_vatp_runs_the_safe_one():
    safe = vatp.engine.settings.checked_config(None, {"fifo": "vatp-fifo-x"})
    assert (safe.allow_block_sharing, safe.use_async_batching, safe.use_cuda_graph) == (False, False, False)
    assert (safe.max_blocks_per_request, safe.scheduler_type) == (0, "vatp-fifo-x")


def test_a_prompt_the_pool_can_never_hold_fails_alone_and_the_others_are_served():
    texts = prompts((37, 500, 64))
    with vatp.enabled(model(), method="h2o", apval=True, **SETTINGS):
        out = model().generate_batch(texts, generation_config=GENERATION, continuous_batching_config=config(
            num_blocks=20))
    assert "needs" in out["req_1"].error and "num_blocks" in out["req_1"].error
    assert [out[f"req_{i}"].generated_tokens for i in (0, 2)] == [alone("h2o", True, n) for n in (37, 64)]


def test_a_request_the_engine_soft_resets_fails_alone():
    """transformers re-queues an evicted request as a new state under the same id, its prompt and output to re-run:
    vatp fails it (its pruned tokens would come back), through the engine's output router, and keeps the others."""
    from transformers.generation.continuous_batching.requests import RequestState

    failed = []
    engine = Engine(vatp.enable(model(), **SETTINGS), 2, "cpu")
    vatp.disable(model())
    engine.manager = type("Manager", (), {"output_router": type("Router", (), {
        "fail_and_deliver": staticmethod(lambda state, error: failed.append((state.request_id, str(error))))})()})()
    first = RequestState("req_0", prompts((120,))[0])
    engine._track(first)
    again = first.create_equivalent_initial_request()
    assert engine.admit(again, cache=None) is False
    assert failed[0][0] == "req_0" and "evicted" in failed[0][1] and "req_0" not in engine.tracked


def test_disable_removes_every_trace_from_the_engine():
    with vatp.enabled(model(), **SETTINGS):
        assert "init_continuous_batching" in vars(model())
        names = [name for name in SCHEDULER_MAPPING if name.startswith("vatp-")]
        assert len(names) == 2
    assert "init_continuous_batching" not in vars(model())
    assert not [name for name in SCHEDULER_MAPPING if name.startswith("vatp-")]
    assert model().config._attn_implementation == "sdpa"


@pytest.mark.parametrize("settings", [dict(method="h2o", apval=True), dict(method="snapkv", apval=True)],
                         ids=["h2o+vatp", "snapkv+vatp"])
def test_the_embedded_model_decodes_under_the_engine_what_generate_decodes(embedded, settings):
    """SmolLM2-135M-Instruct (30 layers, GQA 9/3), float32, three prompts of a chat, split into chunks of 64."""
    model, tokenizer = embedded
    texts = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                     tokenize=False), add_special_tokens=False).input_ids
             for text in ("Name three colours of the rainbow and say why the sky is blue. " * 6,
                          "What is 12 times 12?", "Write one sentence about the sea. " * 12)]
    generation = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    alone = []
    for text in texts:
        ids = torch.tensor([text])
        try:
            with vatp.enabled(model, backend="evict", heavy_ratio=0.25, sink_len=4, **settings), torch.no_grad():
                alone.append(model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=generation)[
                    0, len(text):].tolist())
        except vatp.BudgetError:  # the engine keeps it whole
            with torch.no_grad():
                alone.append(model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=generation)[
                    0, len(text):].tolist())
    with vatp.enabled(model, heavy_ratio=0.25, sink_len=4, **settings):
        out = model.generate_batch(texts, generation_config=generation, continuous_batching_config=vatp.engine_config(
            block_size=32, num_blocks=64, max_batch_tokens=64, max_requests_per_batch=4))
    assert [out[f"req_{i}"].generated_tokens for i in range(3)] == alone


def test_a_sliding_window_model_is_refused_before_the_engine_starts():
    from transformers import AutoConfig, AutoModelForCausalLM

    mistral = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mistral", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=16)).eval()
    with vatp.enabled(mistral, **SETTINGS), pytest.raises(UnsupportedError, match="sliding-window"):
        mistral.generate_batch(prompts()[:2], generation_config=GENERATION, continuous_batching_config=config())
