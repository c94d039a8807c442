"""Benchmark prompts: a small built-in varied set, or a file; cycled to the requested count."""

from __future__ import annotations

import json
from itertools import cycle, islice
from pathlib import Path

BUILTIN_PROMPTS: tuple[str, ...] = (
    "Recite Genesis 1:1.",
    "Why is the sky blue?",
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void;",
    "List three fruits that are red.",
    "Tell me a fortune for today.",
    "Summarize the story of Noah's ark for a child, in plain words, without leaving out the rainbow.",
    "What is the capital of France?",
    "Give one piece of advice to a new programmer about reading error messages carefully.",
)


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per non-empty line; in a ``.jsonl`` file, each line's ``"prompt"`` field."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if str(path).endswith(".jsonl"):
        return [str(json.loads(line)["prompt"]) for line in lines]
    return lines


def get_prompts(num_prompts: int, path: str | Path | None = None) -> list[str]:
    """``num_prompts`` prompts, cycling through the file's (or the built-in) list."""
    source = read_prompts_file(path) if path else list(BUILTIN_PROMPTS)
    if not source:
        raise ValueError(f"no prompts in {path}")
    return list(islice(cycle(source), num_prompts))
