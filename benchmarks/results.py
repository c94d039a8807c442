"""Saved benchmark results: one JSON object per run (the summary dict, config and per-request data)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any


def stamp(summary: dict[str, Any], kind: str, label: str | None, config: dict[str, Any]) -> dict[str, Any]:
    """Add the run's identity (what, when, where, how) to a summary, in place, and return it."""
    summary.update({
        "kind": kind,
        "label": label or kind,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "config": config,
    })
    return summary


def save_result(result: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return out


def load_result(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats get 2 decimals below 100 and none above."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
