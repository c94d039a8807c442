"""Latency arithmetic for one benchmark run, named after ``vllm bench serve``'s figures.

A run is a list of ``RequestRecord``s, each holding the client-side timestamps of its stream.
Definitions (see DESIGN.md, "TTFT"):

* TTFT: request start to the first chunk whose text is non-empty (role-only chunks do not count);
* E2E latency: request start to the end of the response (the last chunk when no end is recorded);
* TPOT: (E2E − TTFT) / (output_tokens − 1), only when output_tokens > 1;
* ITL: the gaps between consecutive non-empty chunks (a diffusion chunk may carry many tokens);
* NFE to first token / total NFE: forward passes, when the stream reports them (diffusion).
* TPF: tokens per forward pass, output_tokens / total NFE per request (EOS padding not counted).

Times are seconds in records and milliseconds in summaries. Nothing here does I/O except
``format_table`` building a string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

STATS = ("mean", "std", "median", "p90", "p99", "min", "max")


class ChunkEvent(NamedTuple):
    """One received chunk: arrival time (s, same clock as ``RequestRecord.start``), its text, its NFE."""

    t: float
    text: str
    nfe: int | None = None


@dataclass
class RequestRecord:
    """What the client saw of one request."""

    start: float
    chunks: list[ChunkEvent] = field(default_factory=list)
    output_tokens: int | None = None  # from usage
    prompt_tokens: int | None = None  # from usage
    error: str | None = None
    end: float | None = None  # response complete ([DONE] or body read)
    final_nfe: int | None = None  # forward passes of the whole request, when reported

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        return "".join(text for _, text, _ in self.chunks)


def _text_chunks(record: RequestRecord) -> list[tuple[float, str, int | None]]:
    return [(t, text, nfe) for t, text, nfe in record.chunks if text]


def ttft(record: RequestRecord) -> float | None:
    """Seconds to the first chunk with non-empty text; None if no text ever came."""
    chunks = _text_chunks(record)
    return chunks[0][0] - record.start if chunks else None


def e2e_latency(record: RequestRecord) -> float | None:
    if record.end is not None:
        return record.end - record.start
    return record.chunks[-1][0] - record.start if record.chunks else None


def tpot(record: RequestRecord) -> float | None:
    """Mean time per output token after the first; None when it is undefined."""
    first, latency = ttft(record), e2e_latency(record)
    if first is None or latency is None or record.output_tokens is None or record.output_tokens <= 1:
        return None
    return (latency - first) / (record.output_tokens - 1)


def itls(record: RequestRecord) -> list[float]:
    """Gaps (s) between consecutive chunks that carry text."""
    times = [t for t, _, _ in _text_chunks(record)]
    return [b - a for a, b in zip(times, times[1:])]


def nfe_to_first_token(record: RequestRecord) -> int | None:
    chunks = _text_chunks(record)
    return chunks[0][2] if chunks else None


def total_nfe(record: RequestRecord) -> int | None:
    if record.final_nfe is not None:
        return record.final_nfe
    reported = [nfe for _, _, nfe in record.chunks if nfe is not None]
    return reported[-1] if reported else None


def tokens_per_forward_pass(record: RequestRecord) -> float | None:
    nfe = total_nfe(record)
    return None if not nfe or record.output_tokens is None else record.output_tokens / nfe


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def describe(values: Sequence[float]) -> dict[str, float | None]:
    """mean, population std, median, p90, p99, min, max; all None for no values."""
    if not values:
        return {name: None for name in STATS}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {
        "mean": mean, "std": std, "median": percentile(values, 50), "p90": percentile(values, 90),
        "p99": percentile(values, 99), "min": min(values), "max": max(values),
    }


def add_stats(summary: dict[str, Any], name: str, values: Sequence[float], unit: str = "") -> None:
    """Write ``{stat}_{name}{unit}`` keys (``mean_ttft_ms``, ``p99_nfe_ttft``, …) into ``summary``."""
    for stat, value in describe(values).items():
        summary[f"{stat}_{name}{unit}"] = value


def _ms(values: Sequence[float | None]) -> list[float]:
    return [v * 1000.0 for v in values if v is not None]


def run_duration(records: Sequence[RequestRecord]) -> float:
    """Wall time from the first request start to the last response end."""
    ends = [e2e_latency(r) for r in records]
    finished = [r.start + e for r, e in zip(records, ends) if e is not None]
    return max(finished) - min(r.start for r in records) if finished else 0.0


def summarize(records: Sequence[RequestRecord], duration_s: float | None = None, *,
              max_concurrency: int | None = None, request_rate: float | None = None) -> dict[str, Any]:
    """Aggregate figures plus per-request series (``per_request``), as a JSON-able dict.

    Only successful requests enter the statistics; ``duration_s`` defaults to ``run_duration``.
    The keys of ``vllm bench serve --save-result`` are there too (``vllm_fields``), so vLLM's
    comparison and plot tools read our JSON; our own keys are unchanged.
    """
    ok = [r for r in records if r.ok]
    duration = run_duration(records) if duration_s is None else duration_s
    output_tokens = sum(r.output_tokens or 0 for r in ok)
    input_tokens = sum(r.prompt_tokens or 0 for r in ok)
    per_request = {
        "ttft_ms": [None if (v := ttft(r)) is None else v * 1000.0 for r in records],
        "tpot_ms": [None if (v := tpot(r)) is None else v * 1000.0 for r in records],
        "e2el_ms": [None if (v := e2e_latency(r)) is None else v * 1000.0 for r in records],
        "itl_ms": [[v * 1000.0 for v in itls(r)] for r in records],
        "output_tokens": [r.output_tokens for r in records],
        "prompt_tokens": [r.prompt_tokens for r in records],
        "nfe_ttft": [nfe_to_first_token(r) for r in records],
        "nfe_total": [total_nfe(r) for r in records],
        "tpf": [tokens_per_forward_pass(r) for r in records],
        "chunks": [len(_text_chunks(r)) for r in records],
        "error": [r.error for r in records],
    }
    summary: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "duration_s": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(ok) / duration if duration > 0 else None,
        "output_throughput": output_tokens / duration if duration > 0 else None,
    }
    add_stats(summary, "ttft", _ms([ttft(r) for r in ok]), "_ms")
    add_stats(summary, "tpot", _ms([tpot(r) for r in ok]), "_ms")
    add_stats(summary, "itl", _ms([gap for r in ok for gap in itls(r)]), "_ms")
    add_stats(summary, "e2el", _ms([e2e_latency(r) for r in ok]), "_ms")
    nfe_first = [float(v) for r in ok if (v := nfe_to_first_token(r)) is not None]
    if nfe_first:
        add_stats(summary, "nfe_ttft", nfe_first)
        add_stats(summary, "nfe_total", [float(v) for r in ok if (v := total_nfe(r)) is not None])
        add_stats(summary, "tpf", [v for r in ok if (v := tokens_per_forward_pass(r)) is not None])
    summary["per_request"] = per_request
    summary.update(vllm_fields(records, summary, max_concurrency, request_rate))
    return summary


def vllm_fields(records: Sequence[RequestRecord], summary: dict[str, Any], max_concurrency: int | None,
                request_rate: float | None) -> dict[str, Any]:
    """``vllm bench serve``'s names for the same figures: seconds per request in ``ttfts``, ``itls``
    (a list per request) and ``latencies`` (0 / [] for a failed request, as vLLM writes them);
    ``request_rate`` is ``"inf"`` when requests were not paced."""
    duration = summary["duration_s"]
    tokens = summary["total_input_tokens"] + summary["total_output_tokens"]
    return {
        "duration": duration,
        "total_token_throughput": tokens / duration if duration > 0 else None,
        "input_lens": [r.prompt_tokens or 0 for r in records],
        "output_lens": [r.output_tokens or 0 for r in records],
        "ttfts": [(ttft(r) or 0.0) if r.ok else 0.0 for r in records],
        "itls": [itls(r) if r.ok else [] for r in records],
        "latencies": [(e2e_latency(r) or 0.0) if r.ok else 0.0 for r in records],
        "errors": [r.error or "" for r in records],
        "max_concurrency": max_concurrency,
        "request_rate": "inf" if request_rate is None or math.isinf(request_rate) else request_rate,
    }


# (section title, metric name, unit suffix, row label); a section prints only if its keys exist.
SECTIONS = (
    ("Time to First Token", "ttft", "_ms", "TTFT (ms)"),
    ("Time per Output Token (excl. 1st token)", "tpot", "_ms", "TPOT (ms)"),
    ("Inter-token Latency", "itl", "_ms", "ITL (ms)"),
    ("End-to-end Latency", "e2el", "_ms", "E2EL (ms)"),
    ("Forward passes to first token", "nfe_ttft", "", "NFE to 1st token"),
    ("Forward passes per request", "nfe_total", "", "NFE total"),
    ("Tokens per forward pass", "tpf", "", "TPF"),
    ("Forward-pass floor", "floor", "_ms", "floor (ms)"),
    ("Forward pass over the whole canvas", "canvas_pass", "_ms", "canvas pass (ms)"),
    ("TTFT / floor", "ttft_over_floor", "", "TTFT/floor"),
)
HEADLINE = (
    ("label", "Label:"),
    ("completed", "Successful requests:"),
    ("failed", "Failed requests:"),
    ("duration_s", "Benchmark duration (s):"),
    ("total_input_tokens", "Total input tokens:"),
    ("total_output_tokens", "Total generated tokens:"),
    ("request_throughput", "Request throughput (req/s):"),
    ("output_throughput", "Output token throughput (tok/s):"),
)
SHOWN_STATS = (("mean", "Mean"), ("median", "Median"), ("p90", "P90"), ("p99", "P99"))  # std: JSON only


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(summary: dict[str, Any], title: str = "Serving Benchmark Result", width: int = 50) -> str:
    """The summary as aligned plain text, in the layout of ``vllm bench serve``."""
    lines = [f" {title} ".center(width, "=")]
    row = lambda label, value: lines.append(f"{label:<{width - 10}}{_cell(value):>10}")  # noqa: E731
    for key, label in HEADLINE:
        if key in summary:
            row(label, summary[key])
    for section, name, unit, label in SECTIONS:
        if f"mean_{name}{unit}" not in summary:
            continue
        lines.append(f" {section} ".center(width, "-"))
        for stat, stat_label in SHOWN_STATS:
            row(f"{stat_label} {label}:", summary[f"{stat}_{name}{unit}"])
    lines.append("=" * width)
    return "\n".join(lines)
