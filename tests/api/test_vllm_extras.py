"""vLLM's request extras, /tokenize, /detokenize, model cards and the draft field, in the serving layer
alone (the fake replica client of ``test_serving``); the real app is ``tests/serve/test_vllm_contract.py``."""

from __future__ import annotations

import asyncio
import json

from dfast_serve.wire import StreamingChunk
from tests.api.fakes import AR, DIFFUSION, body, create, error_of, events, make


def chat(**fields) -> bytes:
    return json.dumps({"model": DIFFUSION, "messages": [{"role": "user", "content": "Hi"}], **fields}).encode()


def test_vllm_extras_reach_the_sampling_params():
    serving, clients = make()
    create(serving, body(ignore_eos=True, min_tokens=2, repetition_penalty=1.3, min_p=0.1, skip_special_tokens=False))
    params = clients[DIFFUSION].requests[0].params
    assert (params.ignore_eos, params.min_tokens, params.repetition_penalty, params.min_p,
            params.skip_special_tokens, params.draft) == (True, 2, 1.3, 0.1, False, False)


def test_min_tokens_may_equal_max_tokens_but_not_exceed_it():
    """``min_tokens == max_tokens`` is valid (vLLM accepts it: exactly that many tokens); one more is a
    400 naming ``min_tokens``, whichever field (or the server default) set the maximum."""
    serving, clients = make(default_max_tokens=6)
    create(serving, body(min_tokens=8))  # max_tokens 8
    create(serving, chat(max_completion_tokens=5, min_tokens=5), "chat")
    create(serving, json.dumps({"model": DIFFUSION, "prompt": "x", "min_tokens": 6}).encode())  # the default, 6
    assert [(r.params.min_tokens, r.params.max_tokens) for r in clients[DIFFUSION].requests] == [(8, 8), (5, 5), (6, 6)]
    for raw, kind in ((body(min_tokens=9), "completion"), (chat(max_completion_tokens=5, min_tokens=6), "chat"),
                      (json.dumps({"model": DIFFUSION, "prompt": "x", "min_tokens": 7}).encode(), "completion")):
        err = error_of(serving, raw, kind)
        assert (err.status, err.param, err.code) == (400, "min_tokens", "invalid_value")
    assert len(clients[DIFFUSION].requests) == 3  # a refused request never reaches the replica


def test_max_completion_tokens_counts_on_completions_too_and_wins():
    serving, clients = make()
    create(serving, body(max_completion_tokens=5))
    create(serving, chat(max_tokens=9, max_completion_tokens=6), "chat")
    assert [r.params.max_tokens for r in clients[DIFFUSION].requests] == [5, 6]


def test_developer_role_is_the_system_role():
    serving, clients = make()
    create(serving, chat(messages=[{"role": "developer", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]), "chat")
    assert clients[DIFFUSION].requests[0].messages == [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Hi"}]


def test_bad_extras_and_unknown_fields_are_400_naming_the_field():
    serving, _ = make()
    assert error_of(serving, body(min_tokens=9)).param == "min_tokens"  # above max_tokens (8)
    assert error_of(serving, body(repetition_penalty=0)).param == "repetition_penalty"
    assert error_of(serving, body(min_p=1.5)).param == "min_p"
    assert error_of(serving, body(ignore_eos="yes")).param == "ignore_eos"
    assert error_of(serving, body(use_beam_search=True)).param == "use_beam_search"  # still strict
    err = error_of(serving, body(stream=True, stream_options={"continuous_usage_stats": True, "x": 1}))
    assert err.status == 400 and "stream_options" in err.param
    for kind, raw in (("completion", body(draft=True)), ("chat", chat(draft=True))):
        err = error_of(serving, raw, kind)
        assert (err.status, err.param) == (400, "draft")


def test_continuous_usage_stats_put_usage_in_every_chunk():
    serving, _ = make()
    out = events(create(serving, body(stream=True, stream_options={"include_usage": True,
                                                                   "continuous_usage_stats": True})))
    assert [e["usage"]["completion_tokens"] for e in out[:3]] == [2, 3, 4]
    assert all(e["usage"]["prompt_tokens"] == 3 for e in out[:4]) and out[3]["choices"] == []
    plain = events(create(serving, body(stream=True)))
    assert all("usage" not in e for e in plain[:-1])


def test_request_id_names_the_response():
    serving, _ = make()
    full = asyncio.run(serving.create("completion", body(), serving.metrics.request(), "bench-7"))
    assert full["id"] == "cmpl-bench-7"


def test_draft_rides_the_native_stream_only_when_asked():
    drafting = [StreamingChunk("", 0, 0, 8, 0.1, 1.0, True, False, 1, draft=" In the beginning"),
                StreamingChunk("In the", 2, 2, 8, 0.5, 2.0, False, False, 2, draft=" beginning God"),
                StreamingChunk(" beginning God", 2, 4, 8, 1.0, 3.0, False, True, 3, "length", draft="")]
    serving, _ = make(diffusion_script=drafting)
    out = events(create(serving, body(draft=True), "native"))
    assert [e["draft"] for e in out[:3]] == [" In the beginning", " beginning God", ""]
    assert [e["full_text"] + e["draft"] for e in out[:3]][-1] == "In the beginning God"
    plain = events(create(make()[0], body(), "native"))
    assert all("draft" not in e for e in plain[:-1])


def test_model_cards_carry_root_and_max_model_len():
    serving, _ = make()
    cards = asyncio.run(serving.list_models())["data"]
    assert [(c["id"], c["root"], c["max_model_len"], c["object"]) for c in cards] == [
        (DIFFUSION, "/models/fake", 1024, "model"), (AR, "/models/fake", 1024, "model")]
    assert asyncio.run(serving.model(AR))["id"] == AR
    err = None
    try:
        asyncio.run(serving.model("nope"))
    except Exception as exc:  # noqa: BLE001
        err = exc
    assert err is not None and (err.status, err.code) == (404, "model_not_found")


def test_tokenize_and_detokenize_have_vllms_shapes():
    serving, _ = make()
    out = asyncio.run(serving.tokenize(json.dumps({"model": AR, "prompt": "ab", "add_special_tokens": False}).encode()))
    assert out == {"count": 2, "max_model_len": 1024, "tokens": [97, 98], "token_strs": None}
    out = asyncio.run(serving.tokenize(json.dumps({"messages": [{"role": "user", "content": "a"}],
                                                   "return_token_strs": True}).encode()))
    assert out["tokens"] == [1, 97] and out["token_strs"] == ["\x01", "a"]
    assert asyncio.run(serving.detokenize(json.dumps({"model": AR, "tokens": [104, 105]}).encode())) == {"prompt": "hi"}
    for raw in ({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, {"model": AR}):
        try:
            asyncio.run(serving.tokenize(json.dumps(raw).encode()))
            raise AssertionError("accepted")
        except Exception as exc:  # noqa: BLE001
            assert getattr(exc, "status", None) == 400 and exc.param == "messages"


def test_routes_and_the_api_key():
    """/tokenize, /detokenize and model cards need the key when one is set; /version and / do not."""
    from tests.serve.ingress_asgi import ingress_app, run

    app, _ = ingress_app(api_key="sekrit")
    tok = json.dumps({"model": AR, "prompt": "ab"}).encode()
    for method, path, body in (("POST", "/tokenize", [tok]), ("POST", "/detokenize", [b'{"tokens": [104]}']),
                               ("GET", "/v1/models/" + AR, [b""])):
        assert run(app, path, body, method=method)[0] == 401
        status, _, raw = run(app, path, body, method=method,
                             headers={"content-type": "application/json", "authorization": "Bearer sekrit"})
        assert status == 200, raw
    status, _, raw = run(app, "/version", [b""], method="GET")
    assert status == 200 and json.loads(raw)["version"]
    status, headers, raw = run(app, "/", [b""], method="GET")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"window.playground" in raw
    assert b"http://" not in raw and b"https://" not in raw  # no CDN: everything ships in the page
