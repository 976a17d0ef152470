"""transformers' OpenAI-compatible serving app, serving one model that vatp prunes inside continuous batching.

``transformers serve`` loads models itself and accepts a fixed set of attention implementations; its app
(``build_server`` and the request handlers) takes any :class:`ModelManager`. :class:`ServedModel` hands it the
model vatp has enabled, and :class:`CheckedChat` answers a request vatp cannot serve with an HTTP 400 that says
why, before it reaches the engine (where it would fail with a 500, or never fit the pool).
"""
from __future__ import annotations

from transformers.cli.serving import ModelManager, build_server
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.response import ResponseHandler
from transformers.cli.serving.transcription import TranscriptionHandler
from transformers.cli.serving.utils import GenerationState


class ServedModel(ModelManager):
    """The one model the server answers with, loaded (and enabled) by vatp, listed by ``/v1/models``."""

    def __init__(self, model, tokenizer, model_id: str):
        self._served = model, tokenizer
        self.model_id = model_id
        super().__init__(device=str(model.device), dtype="auto", attn_implementation=None, force_model=model_id)

    def _load_model(self, model_id_and_revision, tqdm_class=None, progress_callback=None, gguf_file=None):
        return self._served[0]

    def _load_processor(self, model_id_and_revision, gguf_file=None):
        return self._served[1]

    def get_gen_models(self, cache_dir=None) -> list[dict]:
        return [{"id": self.model_id, "object": "model", "owned_by": "vatp", "created": 0}]


class CheckedChat(ChatCompletionHandler):
    """``/v1/chat/completions``, with the requests vatp cannot serve refused before they are admitted: a body
    without a non-empty list of messages, a ``max_tokens`` that is not a positive integer, and a prompt whose
    tokens and new tokens need more blocks than the pool holds (``fits(prompt tokens, new tokens)`` says)."""

    def __init__(self, model_manager, generation_state, fits):
        super().__init__(model_manager, generation_state)
        self.fits = fits

    async def handle_request(self, body: dict, request_id: str):
        from fastapi import HTTPException

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise HTTPException(status_code=400, detail="'messages' must be a non-empty list of messages "
                                                        "({'role': ..., 'content': ...})")
        new_tokens = body.get("max_tokens")
        if new_tokens is not None and (not isinstance(new_tokens, int) or isinstance(new_tokens, bool)
                                       or new_tokens < 1):
            raise HTTPException(status_code=400, detail=f"'max_tokens' must be a positive integer, got {new_tokens!r}")
        self._validate_request(body)
        model, tokenizer = self.model_manager._served
        try:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        except Exception as err:  # a message the chat template cannot render
            raise HTTPException(status_code=400, detail=f"the messages do not fit the chat template: {err}") from None
        gen_config = self._build_generation_config(body, model.generation_config, use_cb=True)
        problem = self.fits(len(prompt), gen_config.max_new_tokens)
        if problem:
            raise HTTPException(status_code=400, detail=problem)
        return await super().handle_request(body, request_id)


def build_app(model, tokenizer, model_id: str, cb_config, fits):
    """The FastAPI app serving ``model`` under ``model_id`` through continuous batching with ``cb_config``; ``fits``
    checks a request's size. Returns the app and its generation state (``shutdown()`` it after serving)."""
    manager = ServedModel(model, tokenizer, model_id)
    state = GenerationState(continuous_batching=True, cb_config=cb_config)
    app = build_server(manager, CheckedChat(manager, state, fits), CompletionHandler(manager, state),
                       ResponseHandler(manager, state), TranscriptionHandler(manager, state), state)
    return app, state
