"""The SSE client on recorded byte streams: framing, chunk kinds, and what counts as first token."""

from __future__ import annotations

import json

from benchmarks.harness.metrics import RequestRecord, itls, nfe_to_first_token, total_nfe, ttft
from benchmarks.harness.sse import SSEDecoder, apply_event, parse_payload, record_from_response


def chat_chunk(delta: dict, finish=None, nfe=None) -> dict:
    obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "tiny-mdlm",
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if nfe is not None:
        obj["dfast"] = {"nfe": nfe, "progress": 0.5}
    return obj


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


ROLE = sse(chat_chunk({"role": "assistant", "content": ""}))
FIRST = sse(chat_chunk({"content": "Caf\u00e9"}, nfe=1))
SECOND = sse(chat_chunk({"content": " au lait"}, nfe=3)).replace(b"\n\n", b"\r\n\r\n")  # CRLF framing
FINAL = sse(chat_chunk({}, finish="stop", nfe=4))
USAGE = sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
COMMENT = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
STREAM = ROLE + COMMENT + FIRST + SECOND + FINAL + USAGE + DONE


def payloads_in_one_go() -> list[str]:
    return SSEDecoder().feed(STREAM)


def test_decoder_frames_every_event():
    payloads = payloads_in_one_go()
    assert len(payloads) == 6 and payloads[-1] == "[DONE]"
    assert json.loads(payloads[1])["choices"][0]["delta"]["content"] == "Caf\u00e9"


def test_decoder_is_split_invariant():
    whole = payloads_in_one_go()
    for cut in range(len(STREAM) + 1):  # includes cuts inside the two-byte é
        decoder = SSEDecoder()
        assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) + decoder.close() == whole
    decoder = SSEDecoder()
    assert [p for i in range(len(STREAM)) for p in decoder.feed(STREAM[i : i + 1])] == whole


def test_decoder_multiline_data_and_unterminated_tail():
    decoder = SSEDecoder()
    assert decoder.feed(b"event: x\ndata: a\ndata:b\n\ndata: [DONE]") == ["a\nb"]
    assert decoder.close() == ["[DONE]"]


def test_parse_payload_kinds():
    role = parse_payload(payloads_in_one_go()[0])
    assert role.text == "" and role.nfe is None and not role.done
    usage = parse_payload(payloads_in_one_go()[4])
    assert usage.text is None and usage.completion_tokens == 3 and usage.prompt_tokens == 7
    assert parse_payload("[DONE]").done
    completion = parse_payload(json.dumps({"choices": [{"index": 0, "text": "hi", "finish_reason": None}],
                                           "dfast": {"nfe": 2, "progress": 0.1}}))
    assert completion.text == "hi" and completion.nfe == 2
    error = parse_payload(json.dumps({"error": {"message": "timed out", "type": "timeout", "param": None, "code": 504}}))
    assert error.error == "timed out" and error.text is None
    assert parse_payload("{not json").error.startswith("bad SSE payload")


def test_recorded_stream_into_record():
    """Bytes arriving in 4 reads at known times; the role-only chunk must not be the first token."""
    reads = [(0.125, ROLE + FIRST[:20]), (0.25, FIRST[20:] + COMMENT), (0.5, SECOND + FINAL[:5]),
             (0.75, FINAL[5:] + USAGE + DONE)]
    record = RequestRecord(start=0.0)
    decoder = SSEDecoder()
    for now, raw in reads:
        for payload in decoder.feed(raw):
            apply_event(record, parse_payload(payload), now)
    assert [(c.t, c.text, c.nfe) for c in record.chunks] == [
        (0.125, "", None), (0.25, "Caf\u00e9", 1), (0.5, " au lait", 3), (0.75, "", 4)]
    assert ttft(record) == 0.25
    assert itls(record) == [0.25]
    assert record.end == 0.75 and record.error is None
    assert (record.output_tokens, record.prompt_tokens) == (3, 7)
    assert nfe_to_first_token(record) == 1 and total_nfe(record) == 4
    assert record.text == "Caf\u00e9 au lait"


def test_error_mid_stream():
    record = RequestRecord(start=0.0)
    stream = sse({"choices": [{"index": 0, "text": "a", "finish_reason": None}]}) + \
        sse({"error": {"message": "Request timed out", "type": "timeout", "param": None, "code": 504}}) + DONE
    for payload in SSEDecoder().feed(stream):
        apply_event(record, parse_payload(payload), 1.0)
    assert record.error == "Request timed out" and record.text == "a" and record.end == 1.0


def test_non_streaming_response():
    record = RequestRecord(start=0.0)
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}, "dfast": {"nfe": 9}}
    record_from_response(record, body, 2.0)
    assert ttft(record) == 2.0 == record.end
    assert record.output_tokens == 1 and total_nfe(record) == 9 and nfe_to_first_token(record) == 9
