"""What vatp does not implement is refused before a token is generated; score precision is a setting.

Each refusal runs on a tiny model of the architecture that has the feature
(Mistral's sliding window, Llama 4's attention chunks, Gemma-2's softcapping,
gpt-oss's learned sinks, EuroBERT's bidirectional attention), or with the
generate() option that needs it, and each accepted case is checked against the
model's own attention.
"""
import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import vatp
from conftest import greedy, tiny_llama
from vatp.refusals import UnsupportedError, check_attention_arguments, model_window


def _prompt(n, seed=1, vocab=128):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _tiny(model_type, **extra):
    config = AutoConfig.for_model(model_type, vocab_size=128, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  bos_token_id=None, eos_token_id=None, pad_token_id=None, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_padding_other_than_left_is_refused_before_generating(backend):
    model = tiny_llama()
    ids = _prompt(30).repeat(2, 1)
    for holes in (slice(-3, None), slice(10, 12)):  # right padding; zeros inside a row
        mask = torch.ones_like(ids)
        mask[1, holes] = 0
        with vatp.enabled(model, heavy_ratio=0.25, backend=backend):
            with pytest.raises(UnsupportedError, match=r"right padding or holes.*padding_side = 'left'"):
                model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_a_sliding_window_shorter_than_the_prompt_is_refused(backend):
    model = _tiny("mistral", sliding_window=16)
    with vatp.enabled(model, heavy_ratio=0.25, backend=backend):
        with pytest.raises(UnsupportedError, match="sliding window of 16 tokens, shorter than this sequence "
                                                   r"\(40 tokens\).*keep prompt \+ generated tokens <= 16"):
            greedy(model, _prompt(40), 4)


def test_a_sliding_window_outgrown_while_generating_is_refused_at_that_step():
    model = _tiny("mistral", sliding_window=42)
    with vatp.enabled(model, heavy_ratio=0.25), pytest.raises(UnsupportedError, match=r"\(43 tokens\)"):
        greedy(model, _prompt(40), 6)


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_a_sliding_window_the_sequence_fits_is_full_attention(backend):
    """Window >= prompt + generated tokens: with nothing pruned, vatp equals the model's own attention."""
    model = _tiny("mistral", sliding_window=64)
    ids = _prompt(40)
    assert model_window(model.config).size == 64
    full = greedy(model, ids, 12)
    with vatp.enabled(model, heavy_ratio=1.0, backend=backend):
        pruned = greedy(model, ids, 12)
    assert pruned[0] == full[0]
    torch.testing.assert_close(pruned[1], full[1], rtol=1e-5, atol=1e-5)


def test_a_window_outgrown_by_a_longer_row_of_a_padded_batch_is_refused():
    """Row 0 (the most padded, as pred.py orders a batch) fits the window; the longer row outgrows it."""
    model = _tiny("mistral", sliding_window=16)
    ids = torch.cat([torch.zeros(1, 8, dtype=torch.long), _prompt(6)], dim=1)
    ids = torch.cat([ids, _prompt(14, seed=2)])
    mask = (torch.arange(14) >= torch.tensor([[8], [0]])).long()
    for backend in ("mask", "evict"):
        with vatp.enabled(model, heavy_ratio=1.0, backend=backend):
            with pytest.raises(UnsupportedError, match=r"sliding window of 16 tokens.*\(17 tokens\)"):
                model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)


def _tiny_llama4(chunk):
    return _tiny("llama4_text", intermediate_size_mlp=128, num_local_experts=2, attention_chunk_size=chunk)


def test_attention_chunks_are_refused_once_outgrown_and_equal_the_model_within_one():
    """Llama 4's chunked layers say so only through their mask: refused at the step that leaves the chunk;
    a sequence inside one chunk is full causal attention, which vatp at the full budget reproduces."""
    model = _tiny_llama4(8)
    assert model.config.layer_types[0] == "chunked_attention" and model_window(model.config).size == 8
    with vatp.enabled(model, heavy_ratio=1.0, backend="evict"):
        with pytest.raises(UnsupportedError, match=r"layer 0 attends chunks of 8 tokens.*\(9 tokens\)"):
            greedy(model, _prompt(6), 6)
    model = _tiny_llama4(64)
    ids = _prompt(40)
    full = greedy(model, ids, 12)
    with vatp.enabled(model, heavy_ratio=1.0, backend="evict"):
        pruned = greedy(model, ids, 12)
    assert pruned[0] == full[0]
    torch.testing.assert_close(pruned[1], full[1], rtol=1e-5, atol=1e-5)


def test_bidirectional_attention_is_refused():
    config = AutoConfig.for_model("eurobert", vocab_size=128, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, mask_token_id=3)
    model = AutoModel.from_config(config).eval()
    with vatp.enabled(model, heavy_ratio=0.25), pytest.raises(UnsupportedError, match=r"is_causal=False"):
        model(_prompt(20))


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_generating_without_a_cache_is_refused(backend):
    """use_cache=False would recompute full attention at every step: nothing would be pruned."""
    model = tiny_llama()
    with vatp.enabled(model, heavy_ratio=0.25, backend=backend):
        with pytest.raises(UnsupportedError, match=r"use_cache=False there is none.*drop use_cache=False"):
            model.generate(_prompt(30), max_new_tokens=4, do_sample=False, use_cache=False)
        model.generation_config.use_cache = False
        try:
            with pytest.raises(UnsupportedError, match=r"use_cache=False"):
                model.generate(_prompt(30), max_new_tokens=4, do_sample=False)
        finally:
            model.generation_config.use_cache = True


@pytest.mark.parametrize("options, message", [
    (dict(prompt_lookup_num_tokens=3), r"assisted or prompt-lookup decoding.*drop assistant_model"),
    (dict(cache_implementation="static"), r"prunes a DynamicCache, not a StaticCache.*no cache_implementation"),
])
def test_generate_options_vatp_cannot_follow_are_refused(options, message):
    """Assisted decoding crops the pruned cache; a static cache is not the one vatp prunes."""
    model = tiny_llama()
    with vatp.enabled(model, heavy_ratio=0.25), pytest.raises(UnsupportedError, match=message):
        model.generate(_prompt(30), max_new_tokens=6, do_sample=False, **options)


def test_a_custom_4d_mask_is_refused():
    """Two packed 15-token documents: a block-diagonal mask vatp would score as plain causal attention."""
    model = tiny_llama()
    block = torch.tril(torch.ones(30, 30, dtype=torch.bool))
    block[15:, :15] = False
    with vatp.enabled(model, heavy_ratio=0.25), pytest.raises(UnsupportedError, match=r"2-D \(batch, length\)"):
        model(_prompt(30).repeat(2, 1), attention_mask=block.expand(2, 1, 30, 30))


def test_the_decoder_called_with_positional_ids_is_pruned_like_the_model():
    model = tiny_llama()
    ids = _prompt(30)
    with vatp.enabled(model, heavy_ratio=0.25, backend="evict") as session:
        hidden = model.model(ids).last_hidden_state
        assert int(session.layers[0].cached) == 30
        assert torch.equal(hidden, model.model(input_ids=ids).last_hidden_state)


def test_softcapping_is_refused():
    model = _tiny("gemma2", attn_logit_softcapping=50.0, final_logit_softcapping=None)
    with vatp.enabled(model, heavy_ratio=0.25), pytest.raises(UnsupportedError, match="softcap=50.0"):
        greedy(model, _prompt(30), 2)


def test_learned_attention_sinks_are_refused():
    model = _tiny("gpt_oss", num_local_experts=2, num_experts_per_tok=1)
    with vatp.enabled(model, heavy_ratio=0.25), pytest.raises(UnsupportedError, match=r"s_aux"):
        greedy(model, _prompt(30), 2)


def test_unknown_attention_arguments_and_dropout_are_refused():
    check_attention_arguments(0, 0.0, {"position_ids": torch.arange(3), "use_cache": True, "softcap": None})
    with pytest.raises(UnsupportedError, match=r"attention argument alibi=<tensor of shape \(4, 3\)>"):
        check_attention_arguments(0, 0.0, {"alibi": torch.zeros(4, 3)})
    model = tiny_llama().train()
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    with vatp.enabled(model, heavy_ratio=0.25), pytest.raises(UnsupportedError, match="model.eval()"):
        model(_prompt(20))


def test_fused_scoring_without_triton_says_how_to_fix_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "triton", None)  # as if triton were not installed
    monkeypatch.delitem(sys.modules, "vatp.fused", raising=False)
    with pytest.raises(ImportError, match=r"scoring='fused' needs triton.*pip install triton, or use "
                                          r"scoring='chunked'"):
        vatp.enable(tiny_llama(), heavy_ratio=0.25, backend="evict", scoring="fused")


def test_a_layer_that_bypasses_vatp_is_refused_after_the_first_forward():
    model = tiny_llama(layers=3)
    attention = model.model.layers[1].self_attn
    attention.config = copy.deepcopy(model.config)  # this layer keeps SDPA whatever the model is set to
    with vatp.enabled(model, heavy_ratio=0.25), pytest.raises(UnsupportedError, match=r"layer\(s\) \[1\]"):
        greedy(model, _prompt(30), 2)


def _decode_gain(model, score_dtype, length=1000, steps=20):
    """What ``steps`` decode steps added to layer 0's accumulated scores, per step and KV head, and their dtype.

    Nothing is pruned (H2O at ratio 1) and each step's probabilities sum to 1 per head: exactly 1 is right.
    """
    with vatp.enabled(model, heavy_ratio=1.0, h2o=True, score_dtype=score_dtype) as session, torch.no_grad():
        out = model(_prompt(length))
        before = session.layers[0].scores.double().sum(dim=-1)
        for _ in range(steps):
            out = model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values)
        scores = session.layers[0].scores
    return ((scores.double().sum(dim=-1) - before) / steps)[0], scores.dtype


def test_bfloat16_scores_lose_the_decode_increments_unless_kept_in_float32():
    model = tiny_llama(num_heads=4, num_kv_heads=2).to(torch.bfloat16)
    rounded, dtype = _decode_gain(model, "model")
    assert dtype == torch.bfloat16
    assert (rounded < 0.9).all()  # ~1/1000 increments vanish into larger scores (8-bit mantissa): 17-21% here
    exact, dtype = _decode_gain(model, "float32")
    assert dtype == torch.float32
    torch.testing.assert_close(exact, torch.ones_like(exact), rtol=0, atol=1e-4)
    default, dtype = _decode_gain(model, None)
    assert dtype == torch.float32 and torch.equal(default, exact)  # the default for bfloat16 models


def test_float16_scores_default_to_the_model_dtype():
    model = tiny_llama(num_heads=4, num_kv_heads=2).half()
    _, dtype = _decode_gain(model, None, length=50, steps=2)
    assert dtype == torch.float16


def test_a_batch_counts_every_prompts_cache_when_choosing_the_scoring():
    from transformers import LlamaConfig

    from vatp import footprint

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    eager = footprint.eager_scoring_bytes(4, 1000, 4)
    cache = footprint.kv_cache_bytes(config, 1000, 4)
    free = footprint.weight_bytes(config, 4) + eager + 2 * cache
    assert footprint.choose_scoring(config, 1000, torch.float32, free, batch=2) == ("eager", None)
    scoring, reason = footprint.choose_scoring(config, 1000, torch.float32, free, batch=3)
    assert scoring == "chunked" and "using chunked scoring" in reason


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_beam_search_is_refused(backend):
    model = tiny_llama()
    ids = _prompt(30)
    with vatp.enabled(model, heavy_ratio=0.25, backend=backend):
        with pytest.raises(UnsupportedError, match="beam search reorders the cache's rows.*num_beams=1"):
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, num_beams=2, do_sample=False)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, num_beams=2, do_sample=False)
    assert out.shape == (1, 34)  # without vatp, beam search runs


@pytest.mark.parametrize("backend", ["mask", "evict"])
def test_reusing_a_pruned_cache_for_several_tokens_is_refused_alike_by_both_backends(backend):
    model = tiny_llama()
    with vatp.enabled(model, heavy_ratio=0.25, backend=backend), torch.no_grad():
        cache = model(_prompt(40)).past_key_values
        with pytest.raises(UnsupportedError, match=r"run the whole prompt in one forward \(on an empty cache\), then "
                                                   r"one token per step \(got 2 new tokens"):
            model(_prompt(2), past_key_values=cache)


def test_output_attentions_warns_that_vatp_returns_no_weights():
    model = tiny_llama()
    model.set_attn_implementation("eager")  # transformers allows output_attentions with eager attention only
    model.config.output_attentions = True
    with pytest.warns(UserWarning, match="vatp returns no attention weights"):
        vatp.enable(model, heavy_ratio=0.25)
    vatp.disable(model)
    model.config.output_attentions = False
    with vatp.enabled(model, heavy_ratio=0.25), pytest.warns(UserWarning, match="outputs.attentions stays empty"):
        model(_prompt(30), output_attentions=True)


@pytest.mark.parametrize("bad", [{"sink_len": 2.5}, {"sink_len": "4"}, {"heavy_ratio": None}, {"apval": "yes"}])
def test_enable_refuses_a_setting_of_the_wrong_type_before_anything_runs(bad):
    model = tiny_llama()
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
        vatp.enable(model, **{"heavy_ratio": 0.25, **bad})
    assert vatp.session_of(model) is None
