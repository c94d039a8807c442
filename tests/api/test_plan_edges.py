"""The router's checks and planning at their edges (``OpenAIServing.plan``, ``choose_model``,
``check_prompt_chars``, the request models' validators): the exact request a replica receives, and
every refusal with its status and the field it names."""

from __future__ import annotations

import json
import time

import pytest

from dfast_serve.api.errors import APIError
from dfast_serve.api.model_choice import ServedModel, auto_engine, choose_model
from dfast_serve.api.prompt_limit import check_prompt_chars, prompt_chars
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest, TokenizeRequest
from tests.api.fakes import AR, DIFFUSION, body, create, error_of, make


def chat(**fields) -> bytes:
    return json.dumps({"model": DIFFUSION, "messages": [{"role": "user", "content": "Hi"}], **fields}).encode()


def sent(clients, model=DIFFUSION):
    return clients[model].requests[-1]


# ---- min_tokens / max_tokens ------------------------------------------------------------------------
def test_min_tokens_equal_to_max_tokens_is_accepted():
    serving, clients = make()
    create(serving, body(min_tokens=8, max_tokens=8))
    assert (sent(clients).params.min_tokens, sent(clients).params.max_tokens) == (8, 8)


def test_min_tokens_over_max_tokens_is_refused_naming_min_tokens():
    serving, clients = make()
    err = error_of(serving, body(min_tokens=9, max_tokens=8))
    assert (err.status, err.param) == (400, "min_tokens")
    assert err.message == "min_tokens (9) must not exceed max_tokens (8)"
    assert clients[DIFFUSION].requests == []


def test_min_tokens_is_checked_against_the_default_max_tokens():
    serving, clients = make(default_max_tokens=5)
    err = error_of(serving, json.dumps({"model": DIFFUSION, "prompt": "x", "min_tokens": 6}).encode())
    assert (err.param, err.message) == ("min_tokens", "min_tokens (6) must not exceed max_tokens (5)")
    create(serving, json.dumps({"model": DIFFUSION, "prompt": "x", "min_tokens": 5}).encode())
    assert sent(clients).params.max_tokens == 5


def test_max_completion_tokens_wins_over_max_tokens():
    serving, clients = make()
    create(serving, body(max_tokens=8, max_completion_tokens=3))
    assert sent(clients).params.max_tokens == 3


# ---- what the replica receives ----------------------------------------------------------------------
def test_a_completion_becomes_exactly_this_replica_request():
    serving, clients = make()
    before = time.time()
    create(serving, body(temperature=0.5, top_p=0.9, top_k=-1, seed=7, stop="END", ignore_eos=True, min_tokens=2,
                         repetition_penalty=1.2, min_p=0.1, skip_special_tokens=False), "completion")
    request = sent(clients)
    assert request.prompt == "In the beginning" and request.messages is None
    p = request.params
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop) == (8, 0.5, 0.9, 0, 7, ["END"])
    assert (p.ignore_eos, p.min_tokens, p.repetition_penalty, p.min_p, p.skip_special_tokens, p.draft) == \
        (True, 2, 1.2, 0.1, False, False)
    assert request.request_id.startswith("cmpl-")
    assert request.diffusion == serving.diffusion[DIFFUSION][0]  # no dfast: the model's resolved options
    assert before - 5 <= request.arrived <= time.time()  # wall-clock arrival, not the monotonic clock


def test_a_chat_request_sends_messages_with_developer_as_system():
    serving, clients = make()
    create(serving, json.dumps({"model": DIFFUSION, "messages": [
        {"role": "developer", "content": "Be brief"},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]}).encode(),
        "chat")
    request = sent(clients)
    assert request.prompt is None
    assert request.messages == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi there"}]
    assert request.request_id.startswith("chatcmpl-")


def test_dfast_overrides_layer_on_the_models_options():
    serving, clients = make()
    create(serving, body(dfast={"ultra_fast_config": {"min_steps": 2}, "threshold": 0.5}))
    options = sent(clients).diffusion
    assert options.block_length == 16  # the model's configured option is kept
    assert options.threshold == 0.5 and options.ultra_fast_config.min_steps == 2
    assert options.ultra_fast_config.max_steps == serving.diffusion[DIFFUSION][0].ultra_fast_config.max_steps


def test_a_bad_dfast_option_is_refused_naming_the_field_under_dfast():
    serving, clients = make()
    err = error_of(serving, body(dfast={"block_length": 0}))
    assert err.status == 400 and err.param == "dfast.block_length"
    err = error_of(serving, body(dfast={"ultra_fast_config": {"early_stop_min_progress": 1.5}}))
    assert err.status == 400 and err.param == "dfast.ultra_fast_config.early_stop_min_progress"
    assert clients[DIFFUSION].requests == []


def test_dfast_on_an_ar_model_is_refused_and_an_ar_request_carries_no_options():
    serving, clients = make()
    err = error_of(serving, body(model=AR, dfast={"steps": 4}))
    assert (err.status, err.param) == (400, "dfast")
    assert err.message == f"dfast options apply to diffusion models; '{AR}' is autoregressive"
    create(serving, body(model=AR))
    assert sent(clients, AR).diffusion is None
    create(serving, body(model=AR, dfast={}))  # an empty object changes nothing and is not refused
    assert sent(clients, AR).diffusion is None


def test_an_empty_dfast_object_keeps_the_models_options():
    serving, clients = make()
    create(serving, body(dfast={}))
    assert sent(clients).diffusion == serving.diffusion[DIFFUSION][0]


def test_the_prompt_limit_is_checked_at_planning():
    serving, clients = make(max_prompt_chars=1024)
    create(serving, body(prompt="x" * 1024))
    err = error_of(serving, body(prompt="x" * 1025))
    assert (err.status, err.param, err.code) == (400, "prompt", "context_length_exceeded")
    err = error_of(serving, chat(messages=[{"role": "user", "content": "x" * 1000},
                                           {"role": "user", "content": "y" * 25}]), "chat")
    assert (err.param, err.code) == ("messages", "context_length_exceeded")
    assert len(clients[DIFFUSION].requests) == 1


# ---- model choice -----------------------------------------------------------------------------------
SERVED = [ServedModel("d", "diffusion"), ServedModel("a", "ar")]


def test_auto_picks_ar_strictly_below_the_threshold():
    assert auto_engine(15, 16) == "ar"
    assert auto_engine(16, 16) == "diffusion"
    assert choose_model("auto", 15, SERVED, 16).name == "a"
    assert choose_model("auto", 16, SERVED, 16).name == "d"


def test_auto_with_one_engine_served_uses_it():
    assert choose_model("auto", 1, [ServedModel("d", "diffusion")], 16).name == "d"
    assert choose_model("auto", 100, [ServedModel("a", "ar")], 16).name == "a"
    ar_first = [ServedModel("a", "ar"), ServedModel("d", "diffusion")]
    assert choose_model("auto", 100, ar_first, 16).name == "d"


def test_a_named_model_is_chosen_whatever_max_tokens():
    assert choose_model("a", 1000, SERVED, 16) == ServedModel("a", "ar")
    assert choose_model("d", 1, SERVED, 16) == ServedModel("d", "diffusion")


def test_an_unknown_model_is_404_naming_model_and_listing_the_served_ones():
    with pytest.raises(APIError) as info:
        choose_model("gpt-4", 8, SERVED, 16)
    err = info.value
    assert (err.status, err.type, err.param, err.code) == (404, "invalid_request_error", "model", "model_not_found")
    assert err.message == "The model 'gpt-4' does not exist; served: auto, d, a"


def test_auto_through_the_serving_layer_follows_max_tokens():
    serving, clients = make()  # auto_ar_below_tokens: 16 by default
    create(serving, body(model="auto", max_tokens=15))
    create(serving, body(model="auto", max_tokens=16))
    assert [r.params.max_tokens for r in clients[AR].requests] == [15]
    assert [r.params.max_tokens for r in clients[DIFFUSION].requests] == [16]


# ---- prompt size ------------------------------------------------------------------------------------
def test_prompt_chars_counts_every_message_and_the_one_prompt():
    parsed = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "abc"}, {"role": "assistant", "content": [{"type": "text", "text": "de"}]}]})
    assert prompt_chars(parsed) == ("messages", 5)
    assert prompt_chars(CompletionRequest.model_validate({"model": "m", "prompt": "abcd"})) == ("prompt", 4)
    assert prompt_chars(CompletionRequest.model_validate({"model": "m", "prompt": ["abcdef"]})) == ("prompt", 6)


def test_check_prompt_chars_allows_the_limit_and_refuses_one_more():
    parsed = CompletionRequest.model_validate({"model": "m", "prompt": "abcd"})
    check_prompt_chars(parsed, 4)
    with pytest.raises(APIError) as info:
        check_prompt_chars(parsed, 3)
    err = info.value
    assert (err.status, err.param, err.code) == (400, "prompt", "context_length_exceeded")
    assert err.message == ("prompt is 4 characters; the limit is 3 (max_prompt_chars), beyond any served "
                           "model's context")


# ---- request model validators -----------------------------------------------------------------------
def refused_field(raw: bytes, kind: str = "completion") -> tuple[int, str | None]:
    serving, _ = make()
    err = error_of(serving, raw, kind)
    return err.status, err.param


def test_stop_accepts_up_to_four_sequences_of_up_to_256_characters():
    serving, clients = make()
    create(serving, body(stop=["a", "b", "c", "d" * 256]))
    assert sent(clients).params.stop == ["a", "b", "c", "d" * 256]
    create(serving, body(stop=None))
    assert sent(clients).params.stop == []
    assert refused_field(body(stop=["a", "b", "c", "d", "e"])) == (400, "stop")
    assert refused_field(body(stop=["x" * 257])) == (400, "stop")
    assert refused_field(body(stop=[""])) == (400, "stop")
    assert refused_field(body(stop="")) == (400, "stop")


def test_stream_options_need_stream_true():
    assert refused_field(body(stream_options={"include_usage": True})) == (400, "stream_options")
    assert refused_field(body(stream=False, stream_options={"include_usage": True})) == (400, "stream_options")
    parsed = CompletionRequest.model_validate({"model": "m", "prompt": "p", "stream": True,
                                               "stream_options": {"include_usage": True}})
    assert parsed.include_usage() and not parsed.continuous_usage()
    parsed = CompletionRequest.model_validate({"model": "m", "prompt": "p", "stream": True,
                                               "stream_options": {"continuous_usage_stats": True}})
    assert not parsed.include_usage() and parsed.continuous_usage()
    parsed = CompletionRequest.model_validate({"model": "m", "prompt": "p"})
    assert not parsed.include_usage() and not parsed.continuous_usage()


def test_exactly_one_non_empty_prompt():
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["only"]}).prompt == "only"
    assert refused_field(body(prompt=["a", "b"])) == (400, "prompt")
    assert refused_field(body(prompt=[])) == (400, "prompt")
    assert refused_field(body(prompt="")) == (400, "prompt")
    assert refused_field(body(prompt=[""])) == (400, "prompt")


def test_tokenize_takes_exactly_one_of_prompt_and_messages():
    assert TokenizeRequest.model_validate({"prompt": "hi"}).message_dicts() is None
    both = {"prompt": "hi", "messages": [{"role": "user", "content": "x"}]}
    for bad in ({}, both):
        with pytest.raises(Exception) as info:
            TokenizeRequest.model_validate(bad)
        assert "exactly one of prompt or messages" in str(info.value)
    parsed = TokenizeRequest.model_validate({"messages": [{"role": "developer", "content": "x"},
                                                          {"role": "user", "content": [{"type": "text", "text": "y"}]}]})
    assert parsed.message_dicts() == [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]


def test_the_replica_request_carries_the_arrival_in_wall_clock_seconds():
    serving, _ = make()
    parsed = CompletionRequest.model_validate({"model": DIFFUSION, "prompt": "p", "max_tokens": 4})
    _, request = serving.plan(parsed, "cmpl-1", time.monotonic() - 100.0)  # arrived 100 s ago
    assert abs(request.arrived - (time.time() - 100.0)) < 5.0
    assert request.request_id == "cmpl-1"
