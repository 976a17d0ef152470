"""LongBench's prompts: middle truncation, chat templates, generation settings, post-processing.

As LongBench's and the paper's pred.py build them. No torch import.
"""
from __future__ import annotations

from .data import NO_CHAT


def build_chat(tokenizer, prompt: str, model_name: str) -> str:
    """The chat prompt of LongBench's pred.py, or the tokenizer's own chat template."""
    if "llama2" in model_name:
        return f"[INST]{prompt}[/INST]"
    if "longchat" in model_name or "vicuna" in model_name:  # FastChat's vicuna_v1.1 template
        return ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                f"helpful, detailed, and polite answers to the user's questions. USER: {prompt} ASSISTANT:")
    if "xgen" in model_name:
        return ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                f"helpful, detailed, and polite answers to the human's questions.\n\n ### Human: {prompt}\n###")
    if "internlm" in model_name:
        return f"<|User|>:{prompt}<eoh>\n<|Bot|>:"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def uses_template(tokenizer, model_name: str) -> bool:
    """Whether the chat prompt comes from the tokenizer's template (which carries its own special tokens)."""
    return not any(k in model_name for k in ("llama2", "longchat", "vicuna", "xgen", "internlm")) and bool(
        getattr(tokenizer, "chat_template", None))


def truncate_middle(tokenizer, prompt: str, max_length: int) -> str:
    """Keep the first and last int(max_length/2) tokens (LongBench: instructions sit at both ends)."""
    ids = tokenizer(prompt, truncation=False, return_tensors="pt").input_ids[0]
    if len(ids) <= max_length:
        return prompt
    half = int(max_length / 2)
    return decode(tokenizer, ids[:half]) + decode(tokenizer, ids[-half:])


def decode(tokenizer, ids) -> str:
    """LongBench's ``tokenizer.decode(ids, skip_special_tokens=True)``, the same text without transformers' warning.

    Transformers 5 skips ``clean_up_tokenization_spaces`` for BPE models (unless forced) and, when the tokenizer's
    setting asks for it, logs "Ignoring clean_up_tokenization_spaces=True for BPE tokenizer" on the first decode.
    Passing the clean-up that transformers would really apply keeps the text and the progress bar clean.
    """
    cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if cleanup and type(model).__name__ == "BPE" and not getattr(
            tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False):
        cleanup = False  # what transformers does anyway
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=cleanup)


def encode_prompt(tokenizer, sample: dict, dataset: str, prompt_format: str, model_name: str, max_length: int):
    """Token ids (1, n) of a sample's final prompt: formatted, truncated, chat-wrapped."""
    prompt = truncate_middle(tokenizer, prompt_format.format(**sample), max_length)
    chat = dataset not in NO_CHAT
    if chat:
        prompt = build_chat(tokenizer, prompt, model_name)
    special = not (chat and uses_template(tokenizer, model_name))
    return tokenizer(prompt, truncation=False, return_tensors="pt", add_special_tokens=special).input_ids


def generation_kwargs(tokenizer, dataset: str, max_new_tokens: int, context_length: int) -> dict:
    """Greedy decoding; samsum also stops at a newline and generates at least one token (LongBench)."""
    kwargs = {"max_new_tokens": max_new_tokens, "num_beams": 1, "do_sample": False, "temperature": 1.0,
              "top_p": None, "top_k": None,
              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    if dataset == "samsum":
        kwargs["min_length"] = context_length + 1
        kwargs["eos_token_id"] = [tokenizer.eos_token_id, tokenizer.encode("\n", add_special_tokens=False)[-1]]
    return kwargs


def left_pad(prompts: list, pad_id: int):
    """Prompts (1, n_i) as one left-padded batch: token ids and attention mask, both (B, max n_i)."""
    import torch

    width = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=prompts[0].dtype)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.shape[1]:] = prompt[0]
        mask[row, width - prompt.shape[1]:] = 1
    return ids, mask


def cut_at_stop(tokens, stop_ids) -> list:
    """A row's generated tokens (a tensor or a list) up to and including its first stop token: what it generates
    alone.

    In a batch, rows that stopped are filled up with padding while the others go on.
    """
    tokens = tokens if isinstance(tokens, list) else tokens.tolist()
    stops = {stop_ids} if isinstance(stop_ids, int) else set(stop_ids or ())
    end = next((k + 1 for k, token in enumerate(tokens) if token in stops), len(tokens))
    return tokens[:end]


def post_process(response: str, model_name: str) -> str:
    if "xgen" in model_name:
        return response.strip().replace("Assistant:", "")
    if "internlm" in model_name:
        return response.split("<eoa>")[0]
    return response
