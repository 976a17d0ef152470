"""An OpenAI-compatible server that prunes every request's KV cache with vatp: ``python -m vatp.serve``.

transformers' own serving app (``transformers serve``: ``/v1/chat/completions``, streamed or not, and
``/v1/models``) runs one model that :func:`vatp.enable` prunes inside continuous batching (``vatp/engine``).
Its dependencies are ``transformers[serving]`` (FastAPI, uvicorn, ``openai``), which the project's set-up
installs. How it works: docs/serving.md.
"""
