"""Architectures beyond Llama: each either gives the model's own output or is refused, never a different one.

``vatp.analysis.compat`` builds a tiny random model of a transformers architecture and checks vatp against
the model itself (full budget, one prompt and a left-padded batch, mask and evict) and evict against mask
when pruned. The families below each carry a feature that once made vatp crash or, for Doge, give a
different output without a word; the unit tests pin each fix down without a model.
"""
import json

import pytest
import torch

import vatp
from conftest import tiny_llama
from vatp import VatpConfig, attention_math
from vatp.analysis import compat
from vatp.session import VatpSession
from vatp.refusals import UnsupportedError, check_attention_arguments, left_padding

def _check(model_type):
    row = compat.check_type(model_type)
    assert row["verdict"] != "BUG", row["reason"]
    return row


def _all_same(row, which=""):
    return all(check["result"] == "same" for name, check in row["checks"].items() if which in name)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen3", "gemma", "gemma3_text", "gemma3", "phi3",
                                        "cohere", "olmo2", "granite", "starcoder2"])
def test_llama_like_families_equal_the_model_and_evict_equals_mask(model_type):
    row = _check(model_type)
    assert row["verdict"] == "supported", row["reason"]
    assert len(row["checks"]) == 7


def test_a_model_that_views_the_attention_output_runs():
    """AFMoE ``.view()``s the attention output: vatp returns it contiguous, as transformers' own functions do."""
    row = _check("afmoe")
    assert row["verdict"] == "supported", row["reason"]


def test_an_additive_mask_bias_is_refused_not_dropped():
    """Doge adds a learned bias through its float mask; vatp read it as allowed/hidden and gave another output."""
    row = _check("doge")
    assert row["verdict"] == "refused"
    assert "adds a bias to its attention logits" in row["reason"]


def test_a_layer_that_attends_twice_in_a_forward_is_refused():
    row = _check("diffllama")
    assert row["verdict"] == "refused"
    assert "more than once in a forward" in row["reason"]


@pytest.mark.parametrize("model_type, message", [
    ("jetmoe", "its keys are expanded after caching"),
    ("deepseek_v3", "its keys are expanded after caching"),
    ("zaya", "LinearAttentionAndFullAttentionLayer"),
])
def test_evict_is_refused_where_the_cache_is_not_the_attended_keys_and_mask_equals_the_model(model_type, message):
    """JetMoE and multi-head latent attention expand their cached keys per head; ZAYA's cache layers also
    hold a state-space state. The mask backend equals the model; evict says to use it."""
    row = _check(model_type)
    assert row["verdict"] == "partly supported"
    assert _all_same(row, ", mask")
    evict = [check for name, check in row["checks"].items() if not name.endswith(", mask")]
    assert {check["result"] for check in evict} == {"refused"}
    assert all(message in check["detail"] and "backend='mask'" in check["detail"] for check in evict)


@pytest.mark.parametrize("model_type, message", [("gemma2", "softcap"), ("gpt_oss", "learned attention sinks"),
                                                 ("minimax", "keeps a cache of its own")])
def test_known_unsupported_features_are_refused_everywhere(model_type, message):
    row = _check(model_type)
    assert row["verdict"] == "refused" and message in row["reason"]


def test_values_wider_than_keys_score_alike_eager_and_chunked():
    """MiMo-V2 and MLA models attend with value vectors of another width than the keys."""
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 4, 37, 16), torch.randn(1, 2, 37, 16), torch.randn(1, 2, 37, 24)
    out, sums = attention_math.eager_prefill(query, key, value, None, 0.25, None)
    chunked_out, chunked_sums = attention_math.chunked_prefill(query, key, value, None, 0.25, None, chunk=8)
    assert out.shape == chunked_out.shape == (1, 37, 4, 24)
    torch.testing.assert_close(chunked_out, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_sums, sums, rtol=0, atol=1e-5)
    step, _ = attention_math.decode_step(query[:, :, -1:], attention_math.DecodeOperands.of(key, value), 0.25)
    torch.testing.assert_close(step, out[:, -1:], rtol=0, atol=1e-6)


def _padded_prompt_mask(length, pads, prefix=0):
    """(B, 1, L, L) bool: causal over each row's tokens after its padding; its first ``prefix`` tokens see each other."""
    rows = []
    for pad in pads:
        allowed = torch.zeros(length, length, dtype=torch.bool)
        allowed[pad:, pad:] = torch.ones(length - pad, length - pad, dtype=torch.bool).tril()
        allowed[pad:pad + prefix, pad:pad + prefix] = True
        rows.append(allowed)
    return torch.stack(rows)[:, None]


def test_row_mask_is_none_for_causal_rows_and_the_row_slice_otherwise():
    causal = _padded_prompt_mask(50, [0, 7])
    assert attention_math.row_mask(causal, 0, 0, chunk=16) is None
    assert attention_math.row_mask(causal, 1, 7, chunk=16) is None
    prefix = _padded_prompt_mask(50, [0, 7], prefix=10)
    assert torch.equal(attention_math.row_mask(prefix, 1, 7, chunk=16), prefix[1:2, :, 7:, 7:])
    additive = torch.zeros(1, 1, 50, 50).masked_fill(~causal[:1], torch.finfo(torch.float32).min)
    assert attention_math.row_mask(additive, 0, 0) is None


def test_a_padded_batch_with_a_prefix_mask_is_scored_as_each_row_alone_under_its_own_mask():
    """A mask that lets a prefix see itself (prefix-LM, image tokens) holds for padded rows too, not causal in its place."""
    torch.manual_seed(0)
    length, pads = 40, [0, 9]
    query, key, value = torch.randn(2, 4, length, 16), torch.randn(2, 2, length, 16), torch.randn(2, 2, length, 16)
    config = VatpConfig(heavy_ratio=0.2, apval=True, sink_len=2)
    mask = _padded_prompt_mask(length, pads, prefix=12)
    batch = VatpSession(config)
    batch.start_sample(pads, None)
    out = batch.attend(0, query, key, value, mask, 0.25)
    for b, pad in enumerate(pads):
        alone = VatpSession(config)
        own = (slice(b, b + 1), slice(None), slice(pad, None))
        expected = alone.attend(0, query[own], key[own], value[own], mask[b:b + 1, :, pad:, pad:], 0.25)
        torch.testing.assert_close(out[b:b + 1, pad:], expected, rtol=0, atol=1e-6)
        ours, theirs = batch.layers[0], alone.layers[0]
        torch.testing.assert_close(ours.token_values(ours.scores, b), theirs.token_values(theirs.scores), rtol=0,
                                   atol=1e-6)
        assert torch.equal(ours.token_mask(b), theirs.token_mask())
    causal = VatpSession(config)
    causal.start_sample(pads, None)
    causal_out = causal.attend(0, query, key, value, _padded_prompt_mask(length, pads), 0.25)
    assert not torch.allclose(causal_out, out)  # the prefix mask changed the result: it was not ignored


def test_an_additive_bias_in_the_prompt_mask_is_refused_and_plain_additive_masks_are_not():
    session = VatpSession(VatpConfig())
    query, key = torch.randn(1, 4, 10, 16), torch.randn(1, 4, 10, 16)
    hidden = ~torch.ones(10, 10, dtype=torch.bool).tril()
    additive = torch.zeros(1, 1, 10, 10).masked_fill(hidden, torch.finfo(torch.float32).min)
    out = session.attend(0, query, key, key, additive, 0.25)
    assert out.shape == (1, 10, 4, 16)
    with pytest.raises(UnsupportedError, match="adds a bias"):
        VatpSession(VatpConfig()).attend(0, query, key, key, additive + 0.5 * ~hidden, 0.25)


def test_a_layer_attending_twice_is_refused_and_a_new_forward_clears_the_record():
    session = VatpSession(VatpConfig())
    query = torch.randn(1, 4, 10, 16)
    session.attend(0, query, query, query, None, 0.25)
    with pytest.raises(UnsupportedError, match="more than once"):
        session.attend(0, query, query, query, None, 0.25)
    session.start_sample([0], None)  # what the decoder's pre-hook does at each prompt
    session.attend(0, query, query, query, None, 0.25)


def test_logits_to_keep_is_passive_and_per_layer_type_masks_give_the_padding():
    check_attention_arguments(0, 0.0, {"logits_to_keep": 1})  # only the LM head reads it
    assert left_padding({"full_attention": None, "sliding_attention": None}) == []
    padded = _padded_prompt_mask(12, [0, 3])
    sliding = padded & ~torch.ones(12, 12, dtype=torch.bool).tril(-6)  # a 6-token window
    assert left_padding({"sliding_attention": sliding, "full_attention": padded}) == [0, 3]  # read off the full one
    additive = torch.zeros(2, 1, 12, 12).masked_fill(~padded, torch.finfo(torch.float32).min)
    assert left_padding({"full_attention": additive}) == [0, 3]
    holes = padded.clone()
    holes[1, :, -1, 5] = False
    with pytest.raises(UnsupportedError, match="right padding or holes"):
        left_padding({"full_attention": holes})


def test_verdicts_and_the_table():
    same, refused = {"result": "same", "detail": ""}, {"result": "refused", "detail": "no"}
    assert compat.verdict({"a": same, "b": same}) == "supported"
    assert compat.verdict({"a": refused, "b": refused}) == "refused"
    assert compat.verdict({"a": same, "b": refused}) == "partly supported"
    assert compat.verdict({"a": same, "b": {"result": "differs", "detail": "1.0"}}) == "BUG"
    assert compat.verdict({"a": same, "b": {"result": "error", "detail": "x"}}) == "BUG"
    rows = [{"type": "b", "verdict": "refused", "reason": "a | b"}, {"type": "a", "verdict": "supported", "reason": ""}]
    text = compat.table(rows)
    assert text.splitlines()[0] == "2 model types: 0 BUG, 1 supported, 0 partly supported, 1 refused, 0 not checked."
    assert text.index("`a`") < text.index("`b`") and "a \\| b" in text


def test_all_resumes_from_its_results_and_drops_a_cut_line(tmp_path, monkeypatch):
    (tmp_path / compat.RESULTS).write_text(json.dumps({"type": "a", "verdict": "supported", "reason": ""}) + "\n{\"ty")
    ran = []
    monkeypatch.setattr(compat, "_in_subprocess", lambda model_type, timeout: ran.append(model_type) or
                        {"type": model_type, "verdict": "refused", "checks": {}, "reason": "r"})
    rows = compat.run_all(tmp_path, ["a", "b"], timeout=1)
    assert ran == ["b"] and [row["type"] for row in rows] == ["a", "b"]
    assert "1 supported" in (tmp_path / compat.TABLE).read_text()


def test_the_command_line_checks_a_type_and_fails_on_a_bug(monkeypatch, capsys):
    assert compat.main(["--type", "llama"]) == 0
    assert capsys.readouterr().out.startswith("llama: supported")
    monkeypatch.setattr(compat, "check_type", lambda model_type, base=None:
                        {"type": model_type, "verdict": "BUG", "checks": {}, "reason": "differs"})
    assert compat.main(["--type", "llama", "--json"]) == 1


def _remote_code_checkpoint(folder, marker):
    """A checkpoint whose config class ships with it (``auto_map``); running that code writes ``marker``."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "custom_cfg", "auto_map": {
        "AutoConfig": "configuration_custom.CustomConfig"}}))
    (folder / "configuration_custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import PretrainedConfig\n\n\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom_cfg'\n")
    return folder


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_with_its_own_code_is_refused_without_the_flag(tmp_path, capsys):
    """transformers asked [y/N] on the terminal (or failed with EOFError) and ran the code on "y"."""
    marker = tmp_path / "the code ran"
    folder = _remote_code_checkpoint(tmp_path / "remote", marker)
    before = _files(tmp_path)
    assert compat.main(["--model", str(folder)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"compat: error: {folder}: its config needs code from the checkpoint's own repository; pass "
        "--trust_remote_code if you trust that repository"]
    assert _files(tmp_path) == before and not marker.exists()
    assert compat.main(["--model", str(folder), "--trust_remote_code"]) == 0  # the user's decision: it runs
    assert marker.exists() and capsys.readouterr().out.startswith("custom_cfg: not checked")


@pytest.mark.parametrize("what", ["missing", "no config"])
def test_a_checkpoint_that_cannot_be_read_is_one_line(tmp_path, capsys, what):
    folder = tmp_path / "model"
    if what == "no config":
        folder.mkdir()
    before = _files(tmp_path)
    assert compat.main(["--model", str(folder)]) == 2
    err = capsys.readouterr().err.splitlines()
    fix = "give a checkpoint folder that holds a config.json, or a transformers model type with --type"
    assert len(err) == 1 and err[0].startswith(f"compat: error: {folder}: ") and err[0].endswith(fix), err
    assert ("no such folder" in err[0]) == (what == "missing")
    assert _files(tmp_path) == before


def test_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compat, "check_type", interrupt)
    assert compat.main(["--type", "llama"]) == 130
    assert capsys.readouterr().err.splitlines() == ["compat: interrupted"]
    monkeypatch.setattr(compat, "_in_subprocess", interrupt)
    assert compat.main(["--all", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"compat: interrupted: the results so far are kept in {tmp_path / compat.RESULTS}; rerun the same command "
        "to resume"]


def test_each_prompt_uses_its_own_mask_even_without_a_decode_step_between():
    """Row masks are worked out once per mask the model hands over; the next prompt's is a new one."""
    model = tiny_llama(num_heads=4, num_kv_heads=2)
    generator = torch.Generator().manual_seed(3)
    batches = []
    for pads in ([0, 5], [7, 0, 3]):
        ids = torch.randint(3, 120, (len(pads), 30), generator=generator)
        mask = torch.ones_like(ids)
        for b, pad in enumerate(pads):
            mask[b, :pad] = 0
        batches.append((ids, mask))
    expected = [model(ids, attention_mask=mask).logits[:, -1] for ids, mask in batches]
    with vatp.enabled(model, heavy_ratio=1.0), torch.no_grad():
        for (ids, mask), logits in zip(batches, expected):
            got = model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True).logits[0]
            torch.testing.assert_close(got, logits, rtol=0, atol=1e-5)
