"""Server-Sent Events framing: ``data: <json>\\n\\n`` per event, ``data: [DONE]\\n\\n`` at the end."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
