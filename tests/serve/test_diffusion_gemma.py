"""DiffusionGemma served end to end: ``source: diffusion_gemma`` with a checkpoint directory (the tiny
random one), real Ray, real HTTP, transformers' model forward."""

from __future__ import annotations

import time

import pytest
import requests

from tests.gemma import CANVAS, STEPS, tiny_checkpoint
from tests.serve.conftest import STARTUP_TIMEOUT_S
from tests.serve.sse import assert_error_shape, chat_text, completion_text, post_stream

MODEL = "tiny-gemma"
PROMPT = "t10 t11 t12"


@pytest.fixture(scope="module")
def gemma_url(server, tmp_path_factory):
    """An app serving the tiny checkpoint directory under ``/gemma`` on the session cluster."""
    from ray import serve

    from dfast_serve.serve.app import build_app

    path = tiny_checkpoint(tmp_path_factory.mktemp("gemma-serve"))
    args = {"models": [{"name": MODEL, "engine": "diffusion", "source": "diffusion_gemma", "path": str(path),
                        "replica": {"num_cpus": 0.25, "torch_threads": 1, "max_ongoing_requests": 4},
                        "diffusion": {"ultra_fast": False}}],
            "router": {"num_cpus": 0.1}}
    serve.run(build_app(args), name="gemma", route_prefix="/gemma")
    url = server.base_url + "/gemma"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while requests.get(url + "/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the DiffusionGemma app did not become ready"
        time.sleep(1)
    yield url
    serve.delete("gemma")


def body(**extra):
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": CANVAS + 4, "seed": 3, "temperature": 1.0, **extra}


def test_streamed_completion_sends_each_canvas_and_equals_the_non_streamed_one(gemma_url):
    """max_tokens 12 with a canvas of 8: two canvases, the second cut to 4 tokens (finish: length)."""
    events = post_stream(gemma_url + "/v1/completions", body(stream=True, stream_options={"include_usage": True}))
    texts = [e for e in events if e.get("choices") and e["choices"][0]["text"]]
    assert len(texts) == 2  # one chunk per canvas, in the standard mode
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == CANVAS + 4
    whole = requests.post(gemma_url + "/v1/completions", json=body(), timeout=120)
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["text"] == completion_text(events)
    assert len(completion_text(events).split()) == CANVAS + 4


def test_chat_stream_and_dfast_options_that_apply(gemma_url):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "t20 t21"}], "max_tokens": CANVAS,
            "stream": True, "dfast": {"steps": 2, "ultra_fast": True}}
    events = post_stream(gemma_url + "/v1/chat/completions", chat)
    assert len(chat_text(events).split()) == CANVAS


def test_native_stream_drafts_every_step_before_the_canvas_commits(gemma_url):
    chunks = post_stream(gemma_url + "/v1/dfast/stream", body(max_tokens=CANVAS, draft=True))
    assert chunks[0]["nfe"] == 1 and chunks[0]["draft"] and not chunks[0]["new_text"]
    committed = [c for c in chunks if c["new_text"]]
    assert [c["nfe"] for c in committed] == [STEPS]
    assert len([c for c in chunks if c["draft"]]) == STEPS - 1  # each pass but the last, which commits


@pytest.mark.parametrize("extra, param", [
    ({"dfast": {"block_length": 64}}, "dfast.block_length"),
    ({"dfast": {"ultra_fast_config": {"min_steps": 2}}}, "dfast.ultra_fast_config.min_steps"),
    ({"top_p": 0.5}, "top_p"),
])
def test_options_that_do_not_apply_are_refused_naming_them(gemma_url, extra, param):
    response = requests.post(gemma_url + "/v1/completions", json=body(**extra), timeout=60)
    assert param in assert_error_shape(response, 400, param)["message"]


def test_image_content_is_refused(gemma_url):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "t20"}, image]}]
    response = requests.post(gemma_url + "/v1/chat/completions", json={"model": MODEL, "messages": messages},
                             timeout=60)
    error = assert_error_shape(response, 400)
    assert error["param"].startswith("messages"), error
