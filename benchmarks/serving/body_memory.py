"""Router-side cost of a request body: peak memory and time of parse + validate for worst-case bodies.

Each body is built to the size under test (default: ``max_body_bytes``, the largest a router
accepts) in a shape chosen to make JSON parsing or the body checks expensive per byte: one long
key over a long list (memory ∝ key length × items for a checker that builds every path up front),
wide lists of the smallest containers (Python spends ~64 bytes on each 2-byte ``{}``), many long
keys, nesting at the depth limit, repeated keys, many invalid list items or unknown keys (pydantic
builds an error object for each unless told to stop at the first), astral characters (4 bytes per character in a
Python string). Peak memory is tracemalloc's peak during ``parse_json`` + ``validate`` (the body
bytes themselves excluded); time is the best of ``--repeat`` untraced runs.

    python -m benchmarks.serving.body_memory            # 1 MB bodies, table + JSON, ~1 min
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any, Callable

from benchmarks.harness.results import add_save_result, finish
from dfast_serve.api.body import MAX_JSON_DEPTH, parse_json, validate
from dfast_serve.api.errors import APIError
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest
from dfast_serve.config import ServerConfig



def _fill(head: bytes, unit: bytes, tail: bytes, size: int, sep: bytes = b",") -> bytes:
    """``head`` + as many ``unit``s (joined by ``sep``) as fit in ``size`` bytes + ``tail``."""
    n = max(1, (size - len(head) - len(tail) + len(sep)) // (len(unit) + len(sep)))
    return head + sep.join([unit] * n) + tail


def _keyed(head: bytes, key_length: int, value: bytes, tail: bytes, size: int) -> bytes:
    """About ``size`` bytes of an object of distinct keys (``key_length`` characters or more), each to ``value``."""
    length = max(key_length, len(str(size)))  # room for the key's number
    n = max(1, (size - len(head) - len(tail)) // (length + len(value) + 4))
    keys = (str(i).rjust(length, "k").encode() for i in range(n))
    return head + b",".join(b'"' + k + b'":' + value for k in keys) + tail


def worst_case_bodies(size: int) -> dict[str, bytes]:
    """Adversarial bodies of about ``size`` bytes (never more), by name."""
    half = size // 2
    nest = b"[" * (MAX_JSON_DEPTH - 2) + b"]" * (MAX_JSON_DEPTH - 2)  # levels 3..32
    prompt = b'{"model":"m","prompt":"'
    bodies: dict[str, bytes] = {
        "long_key_over_list": _fill(b'{"' + b"k" * half + b'":[', b"0", b"]}", size),
        "wide_empty_objects": _fill(b'{"x":[', b"{}", b"]}", size),
        "wide_empty_arrays": _fill(b'{"x":[', b"[]", b"]}", size),
        "wide_small_ints": _fill(b'{"x":[', b"0", b"]}", size),
        "wide_short_strings": _fill(b'{"x":[', b'"ab"', b"]}", size),
        "wide_object_of_objects": _keyed(b"{", 1, b"{}", b"}", size),
        "many_long_keys": _keyed(b"{", 1000, b"[0,0,0,0,0,0,0,0]", b"}", size),
        "long_keys_at_every_level": (
            b'{"' + b'":{"'.join([b"k" * (size // MAX_JSON_DEPTH - 8)] * (MAX_JSON_DEPTH - 1))
            + b'":0' + b"}" * (MAX_JSON_DEPTH - 1)
        ),
        "deep_and_wide": _fill(b'{"x":[', nest, b"]}", size),
        "deeper_than_the_limit": b'{"x":' + b"[" * (size - 6) + b"}",
        "repeated_keys": _fill(b"{", b'"max_tokens":1', b"}", size),
        "unknown_keys": _keyed(b'{"model":"m","prompt":"p",', 1, b"0", b"}", size),
        "bad_stop_items": _fill(b'{"model":"m","prompt":"p","stop":[', b"1", b"]}", size),
        "bad_messages": _fill(b'{"model":"m","messages":[', b'{"role":"user","content":[1,2]}', b"]}", size),
        "many_content_parts": _fill(b'{"model":"m","messages":[{"role":"user","content":[',
                                    b'{"type":"text","text":"a"}', b"]}]}", size),
        "parts_and_astral_text": _fill(
            b'{"model":"m","messages":[{"role":"user","content":['
            + b",".join([b'{"type":"text","text":"a"}'] * min(6_800, size // 100)) + b']},{"role":"user","content":"'
            + b"\\ud83d\\ude00", b"a", b'"}]}', size, sep=b""),  # parts up to the item limit, astral text after
        "long_prompt": _fill(prompt, b"a", b'"}', size, sep=b""),
        "astral_prompt": _fill(prompt + b"\\ud83d\\ude00", b"a", b'"}', size, sep=b""),
        "escaped_astral_prompt": _fill(prompt, b"\\ud83d\\ude00", b'"}', size, sep=b""),
    }
    assert all(len(b) <= size for b in bodies.values()), {k: len(b) for k, b in bodies.items() if len(b) > size}
    return bodies


def parse_and_validate(raw: bytes) -> str:
    """What the router does with a body before routing it: ``accepted`` or the 400's code and param.

    The schema is the chat one for a body with ``messages`` (the router picks it by route).
    """
    try:
        body = parse_json(raw)
        validate(ChatCompletionRequest if "messages" in body else CompletionRequest, body)
    except APIError as err:
        return f"{err.status} {err.code} {(err.param or '')[:24]}".rstrip()
    return "accepted"


def peak_bytes(call: Callable[[], Any]) -> tuple[int, Any]:
    """tracemalloc's peak (bytes above what was allocated before) while ``call`` runs, and its result."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = call()
        return tracemalloc.get_traced_memory()[1] - base, result
    finally:
        tracemalloc.stop()


def best_seconds(call: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def run(size: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for name, raw in worst_case_bodies(size).items():
        peak, outcome = peak_bytes(lambda: parse_and_validate(raw))
        seconds = best_seconds(lambda: parse_and_validate(raw), repeat)
        rows.append({"body": name, "bytes": len(raw), "outcome": outcome, "peak_bytes": peak,
                     "peak_per_body_byte": round(peak / len(raw), 2), "ms": round(seconds * 1000, 2)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'body':26s} {'bytes':>9s} {'peak MB':>8s} {'peak/body':>9s} {'ms':>8s}  outcome"]
    for r in rows:
        lines.append(f"{r['body']:26s} {r['bytes']:9d} {r['peak_bytes'] / 1e6:8.2f} "
                     f"{r['peak_per_body_byte']:9.2f} {r['ms']:8.2f}  {r['outcome']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=ServerConfig.model_fields["max_body_bytes"].default,
                        help="body size in bytes (default: max_body_bytes' default)")
    parser.add_argument("--repeat", type=int, default=5, help="untraced runs per body; the best is reported")
    add_save_result(parser, "body_memory")
    args = parser.parse_args(argv)
    rows = run(args.size, args.repeat)
    return finish({"rows": rows, "max_peak_per_body_byte": max(r["peak_per_body_byte"] for r in rows),
                   "max_ms": max(r["ms"] for r in rows)}, "body_memory", args, table=table(rows), out=args.save_result)


if __name__ == "__main__":
    main()
