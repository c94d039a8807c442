"""Server-Sent Events framing: ``data: <json>\\n\\n`` per event, ``data: [DONE]\\n\\n`` at the end.

Generated text goes out as UTF-8 (not ``\\uXXXX``-escaped), except the characters that Python's
``str.splitlines`` (and so ``requests``' ``iter_lines(decode_unicode=True)``) takes for line
breaks beyond the ones JSON escapes anyway: NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR. Raw,
they would split one event into several lines on such clients.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"

# JSON output holds these only inside strings, where a \u escape means the same character.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def event(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).translate(_LINE_BREAKS)
    return b"data: " + text.encode() + b"\n\n"
