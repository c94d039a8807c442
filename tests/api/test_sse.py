"""SSE framing: one event is one line to every line splitter, whatever the generated text holds."""

from __future__ import annotations

import json

from dfast_serve.api.sse import DONE, event

# Every character str.splitlines breaks on (\n, \r, \v, \f, \x1c-\x1e, NEL, U+2028, U+2029), found by
# asking it rather than listing them.
LINE_BREAKS = "".join(c for c in map(chr, range(0x3000)) if len(f"a{c}b".splitlines()) > 1)


def test_the_probe_finds_the_unicode_line_breaks():
    assert {"\n", "\r", "\x85", "\u2028", "\u2029"} <= set(LINE_BREAKS)


def test_an_event_survives_splitlines_with_every_line_break_in_its_text():
    payload = {"choices": [{"text": f"x{LINE_BREAKS}y", "index": 0}], "model": "caf\u00e9 \U0001f600"}
    lines = event(payload).decode("utf-8").splitlines()
    assert lines[1:] == [""]  # the event's own blank line, nothing else
    assert lines[0].startswith("data: ") and json.loads(lines[0][len("data: "):]) == payload


def test_other_text_stays_utf8_not_escaped():
    assert "caf\u00e9 \U0001f600".encode() in event({"text": "caf\u00e9 \U0001f600"})
    assert DONE.decode().splitlines() == ["data: [DONE]", ""]
