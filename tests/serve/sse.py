"""Reading our SSE streams in tests."""

from __future__ import annotations

import json

import requests


def post_stream(url: str, body: dict, timeout: float = 120) -> list[dict]:
    """POST and return every ``data:`` payload; ``[DONE]`` must be the last event."""
    with requests.post(url, json=body, stream=True, timeout=timeout) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line]
    assert events and events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def completion_text(events: list[dict]) -> str:
    return "".join(c["choices"][0]["text"] for c in events if c.get("choices"))


def chat_text(events: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c.get("choices"))


def assert_error_shape(response: requests.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error
