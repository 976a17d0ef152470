"""The internals of transformers' continuous batching that vatp/engine relies on, pinned: an upgrade that moves one
fails here by name, before an engine test fails in a way that is hard to read. They are undocumented."""
import dataclasses
import inspect

import pytest
import transformers
from transformers import ContinuousBatchingConfig
from transformers.generation.continuous_batching import cache, cache_manager, continuous_api, requests, scheduler

from conftest import tiny_llama


def test_the_transformers_version_vatp_engine_was_written_for():
    assert transformers.__version__ == "5.17.0"


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_entry_points_and_the_attention_switch():
    assert parameters(transformers.GenerationMixin.init_continuous_batching)[1:] == [
        "generation_config", "continuous_batching_config", "workload_hints"]
    assert "self.init_continuous_batching(" in inspect.getsource(continuous_api.ContinuousMixin)  # generate_batch's path
    switch = inspect.getsource(continuous_api.ContinuousBatchingManager.switch_to_cb_friendly_attn)
    assert '"paged|" in target_implem' in switch and "self._original_attn_impl = original_attn_impl" in switch
    stop = inspect.getsource(continuous_api.ContinuousBatchingManager.stop)
    assert "self.model.set_attn_implementation(self._original_attn_impl)" in stop
    assert parameters(continuous_api.OutputRouter.fail_and_deliver)[1:] == ["state", "error"]


def test_schedulers():
    assert set(scheduler.SCHEDULER_MAPPING) >= {"fifo", "prefill_first"}
    assert "SCHEDULER_MAPPING.get(" in inspect.getsource(continuous_api.ContinuousBatchingManager._create_batch_processor)
    for cls in (scheduler.FIFOScheduler, scheduler.PrefillFirstScheduler):
        assert parameters(cls.schedule_batch)[1:] == ["token_budget", "cache_budget"]
        assert "self._get_waiting_candidates()" in inspect.getsource(cls.schedule_batch)
    assert parameters(scheduler.Scheduler.add_waiting_request)[1:] == ["state"]
    # The processor fails a request alone when queueing it raises; the offloader's soft reset re-queues it.
    assert "self._handle_request_error(e, state)" in inspect.getsource(
        continuous_api.ContinuousBatchProcessor._update_tp_group_state)
    assert "scheduler.add_waiting_request(new_state)" in inspect.getsource(
        transformers.generation.continuous_batching.offloading_manager.OffloadingManager.offload_requests)


def test_request_state_and_the_positions_it_drives():
    fields = {f.name for f in dataclasses.fields(requests.RequestState)}
    assert fields >= {"request_id", "initial_tokens", "generated_tokens", "position_offset", "allocated_blocks",
                      "max_new_tokens", "num_children", "_true_initial_tokens"}
    assert set(requests.FutureRequestState.__slots__) >= {"state", "has_new_token", "query_length"}
    prepare = inspect.getsource(transformers.generation.continuous_batching.input_outputs.ContinuousBatchingIOs
                                .prepare_batch_tensors)
    assert "past_length = state.position_offset" in prepare
    assert "position_ids.extend(range(past_length, past_length + query_length))" in prepare
    assert "cache.get_seqlens_k(past_length, query_length)" in prepare


def test_the_paged_cache():
    source = inspect.getsource(cache.PagedAttentionCache)
    for name in ("self.layer_index_to_group_indices", "self.key_cache", "self.value_cache", "self.read_trash_index",
                 "self.write_trash_index", "self.group_cache_managers", "self._block_manager"):
        assert name in source, name
    assert parameters(cache_manager.BlockManager.free_blocks)[1:] == ["blocks", "shareable"]
    assert "block_table" in inspect.getsource(cache_manager.FullAttentionCacheAllocator.__init__)
    assert cache.PagedAttentionCache.get_seqlens_k.__doc__ and "past_length + query_length" in inspect.getsource(
        cache.PagedAttentionCache.get_seqlens_k)


def test_the_config_fields_vatp_reads():
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    assert fields >= {"allow_block_sharing", "use_async_batching", "use_cuda_graph", "q_padding_interval_size",
                      "kv_padding_interval_size", "varlen_compile_config", "decode_compile_config",
                      "default_compile_level", "cpu_offload_space", "max_blocks_per_request", "scheduler_type"}
    assert ContinuousBatchingConfig(use_cuda_graph=True).cuda_graph_booleans == (True, True)


@pytest.mark.parametrize("name", ["cache", "read_index", "write_index", "cu_seq_lens_q", "position_ids"])
def test_what_a_step_hands_the_attention_and_the_decoder(name):
    """A real step of the engine: the keyword arguments the attention function and the decoder receive."""
    from transformers import AttentionInterface, GenerationConfig
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model, seen = tiny_llama(), {}

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.setdefault("attention", set(kwargs))
        return ALL_ATTENTION_FUNCTIONS["paged|sdpa"](module, query, key, value, attention_mask, **kwargs)

    def decoder(module, args, kwargs):
        seen.setdefault("decoder", set(kwargs))

    hook = model.get_decoder().register_forward_pre_hook(decoder, with_kwargs=True)
    AttentionInterface.register("paged|spy", spy)
    model.set_attn_implementation("paged|spy")
    try:
        model.generate_batch([[1, 2, 3]], generation_config=GenerationConfig(max_new_tokens=2, eos_token_id=None),
                             continuous_batching_config=ContinuousBatchingConfig(
                                 block_size=8, num_blocks=8, max_batch_tokens=16, allow_block_sharing=False))
    finally:
        hook.remove()
        model.set_attn_implementation("sdpa")
    assert name in (seen["decoder"] if name in ("cu_seq_lens_q", "position_ids") else seen["attention"])


def test_the_serving_app_vatp_serve_reuses():
    from transformers.cli.serving import ModelManager, build_server, chat_completion, server, utils

    assert parameters(build_server) == ["model_manager", "chat_handler", "completion_handler", "response_handler",
                                        "transcription_handler", "generation_state", "enable_cors"]
    assert {"device", "dtype", "attn_implementation", "force_model"} <= set(parameters(ModelManager.__init__))
    manager = inspect.getsource(ModelManager.load_model_and_processor)
    assert "self._load_processor(" in manager and "self._load_model(" in manager
    assert "model_manager.get_gen_models()" in inspect.getsource(server.build_server)  # /v1/models
    handler = chat_completion.ChatCompletionHandler
    assert parameters(handler.handle_request)[1:] == ["body", "request_id"]
    assert parameters(handler._build_generation_config)[1:] == ["body", "model_generation_config", "use_cb"]
    assert {"continuous_batching", "cb_config"} <= set(parameters(utils.GenerationState.__init__))
    assert "model.init_continuous_batching(" in inspect.getsource(utils.CBGenerateManager.init_cb)
