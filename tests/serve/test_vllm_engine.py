"""``engine: vllm`` end to end: SmolLM2 on vLLM's CPU engine in its own environment (``scripts/setup_vllm.sh``),
behind the same router, real Ray, real HTTP; its greedy answers against bare vLLM's on the same prompts.

Without the vLLM environment these tests skip, saying how to build it; under ``CI=1`` they fail instead
(``.ci/run`` builds it).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from dfast_serve.config.vllm import VLLM_SETUP
from dfast_serve.models.cache import smollm2_dir
from tests.serve.conftest import STARTUP_TIMEOUT_S, replica_stats
from tests.serve.helpers import VLLM_PYTHON, require_vllm_environment
from tests.serve.sse import assert_error_shape, chat_text, completion_text, post_stream

MODEL, APP = "smollm2-vllm", "vllm"
PROMPTS = ["Once upon a time", "The three primary colors are"]
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "user", "content": "Name a fruit that is yellow."}]]
MAX_TOKENS = 16
ARGS = {"models": [{"name": MODEL, "engine": "vllm", "source": "embedded",
                    "replica": {"num_cpus": 0.5, "max_ongoing_requests": 4},
                    "vllm": {"enforce_eager": True, "max_model_len": 8192}}],
        "router": {"num_cpus": 0.1}}


@pytest.fixture(scope="module")
def vllm_url(server, tmp_path_factory):
    """The app under ``/vllm`` on the session cluster, and bare vLLM's answers (computed meanwhile)."""
    require_vllm_environment()
    from ray import serve

    from dfast_serve.serve.app import build_app

    cases = json.dumps({"prompts": PROMPTS, "chats": CHATS, "max_tokens": MAX_TOKENS})
    answers = tmp_path_factory.mktemp("bare-vllm") / "answers.json"
    reference = subprocess.Popen([VLLM_PYTHON, str(Path(__file__).with_name("vllm_reference.py")), str(smollm2_dir()),
                                  str(answers)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    serve.run(build_app(ARGS), name=APP, route_prefix="/vllm", blocking=False)
    url = server.base_url + "/vllm"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while requests.get(url + "/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the engine: vllm app did not become ready"
        time.sleep(1)
    _, err = reference.communicate(cases, timeout=STARTUP_TIMEOUT_S)
    assert reference.returncode == 0, err[-3000:]
    yield url, json.loads(answers.read_text())
    serve.delete(APP)


def completion(url: str, **fields) -> dict:
    response = requests.post(url + "/v1/completions", json={"model": MODEL, "max_tokens": MAX_TOKENS, **fields},
                             timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_greedy_answers_equal_bare_vllm(vllm_url):
    """Completions and chats at temperature 0, streamed and not, are bare vLLM's answers to the same inputs."""
    url, bare = vllm_url
    for prompt, expected in zip(PROMPTS, bare["prompts"]):
        assert completion(url, prompt=prompt, temperature=0)["choices"][0]["text"] == expected
        events = post_stream(url + "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS,
                                                        "temperature": 0, "stream": True})
        assert completion_text(events) == expected
        assert len([e for e in events if e["choices"] and e["choices"][0]["text"]]) > 1  # token by token
    for messages, expected in zip(CHATS, bare["chats"]):
        body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
        response = requests.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == expected
        assert chat_text(post_stream(url + "/v1/chat/completions", {**body, "stream": True})) == expected


def test_usage_and_ignore_eos(vllm_url):
    """Usage counts vLLM's generated tokens; ``ignore_eos`` runs a short answer on to exactly max_tokens."""
    url, _ = vllm_url
    body = {"model": MODEL, "messages": CHATS[0], "max_tokens": 40, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    short = post_stream(url + "/v1/chat/completions", body)
    assert short[-2]["choices"][0]["finish_reason"] == "stop"
    assert short[-1]["usage"]["completion_tokens"] < 40
    assert short[-1]["usage"]["prompt_tokens"] > 10  # the chat template's tokens
    long = post_stream(url + "/v1/chat/completions", {**body, "ignore_eos": True})
    assert long[-2]["choices"][0]["finish_reason"] == "length"
    assert long[-1]["usage"]["completion_tokens"] == 40
    assert chat_text(long).startswith(chat_text(short))


def test_stop_string_cuts_the_answer_and_never_streams(vllm_url):
    url, bare = vllm_url
    answer = bare["chats"][0]
    stop = answer.split()[-1].strip(".")  # the last word of the plain answer ("Paris")
    events = post_stream(url + "/v1/chat/completions", {"model": MODEL, "messages": CHATS[0], "temperature": 0,
                                                        "max_tokens": MAX_TOKENS, "stop": [stop], "stream": True})
    text = chat_text(events)
    assert text == answer[:answer.index(stop)]
    assert all(stop[:2] not in (e["choices"][0]["delta"].get("content") or "") for e in events if e["choices"])
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_field_vllm_cannot_map_is_a_400_naming_it(vllm_url):
    url, _ = vllm_url
    response = requests.post(url + "/v1/dfast/stream", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4,
                                                              "draft": True}, timeout=60)
    assert_error_shape(response, 400, "draft")
    too_long = requests.post(url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 9000},
                             timeout=60)
    assert assert_error_shape(too_long, 400, "max_tokens")["code"] == "context_length_exceeded"


def test_a_client_that_disconnects_aborts_the_vllm_request(vllm_url):
    """A stream of 4,000 forced tokens (a minute on this CPU) dropped after its first chunk: vLLM no longer
    holds the request within seconds."""
    url, _ = vllm_url
    before = replica_stats("ARReplica", APP)["aborted"]
    body = {"model": MODEL, "prompt": "Count:", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: closing this generator would close the connection
        first = next(lines)
        while not first:
            first = next(lines)
        held = replica_stats("ARReplica", APP)
        assert held["unfinished"] == 1, (first, held)
    deadline = time.monotonic() + 20
    while (stats := replica_stats("ARReplica", APP))["unfinished"] or stats["in_flight"]:
        assert time.monotonic() < deadline, f"vLLM still holds the abandoned request: {stats}"
        time.sleep(0.1)
    assert stats["aborted"] == before + 1, (before, stats)


def test_a_missing_vllm_environment_fails_the_app_at_start_naming_the_setup_script(monkeypatch, tmp_path):
    from dfast_serve.config import ServedModelConfig
    from dfast_serve.serve.app import vllm_interpreter

    monkeypatch.setenv("DFASTLLM_VLLM_PYTHON", str(tmp_path / "absent" / "python"))
    with pytest.raises(ValueError, match=VLLM_SETUP):
        vllm_interpreter(ServedModelConfig.model_validate(ARGS["models"][0]))
    explicit = ServedModelConfig.model_validate({**ARGS["models"][0], "vllm": {"python": "/on/the/gpu/nodes/python"}})
    assert vllm_interpreter(explicit) == "/on/the/gpu/nodes/python"  # a cluster path: not checked here
