"""Prefill pacing: prompt chunks sized in time, so that no prefill pass holds the step loop for long.

A token budget alone cannot bound a pass's time: 2,048 prompt tokens cost about one decode pass on a
GPU and a hundred on one CPU thread, and a token deep in a long prompt costs more than one at its start
(it attends to everything before it). ``PrefillPacer`` measures the replica's own passes and sizes each
prefill chunk so that the pass takes about ``chunk_decodes`` decode passes' time:

* its time model: a pass takes ``overhead + rate * weight``; ``overhead`` is a decode pass (what any
  pass pays to read the weights), ``rate`` the measured seconds per weighted token (a running average),
  and a chunk of ``n`` tokens after ``c`` cached positions weighs ``n * (1 + (c + n / 2) / span)``
  (``attention_span``: the context at which a token's attention costs as much as its layers' matmuls);
* a step's prefill passes together stay within that time (a newly arrived short prompt, prefilled
  first, leaves the long one's chunk for a later step);
* while sequences decode, prefill gets at most half of the time: after a prefill pass, prompts already
  under way wait until decode passes have run as long (a prompt not yet started does not: a new
  request's first pass goes first).

Until it has measured a decode pass and a prefill pass (the first of each is skipped: it pays for lazy
initialisation) the pacer bounds nothing; a replica's warm-up makes both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMOOTHING = 0.3  # weight of the newest pass in the running averages
MIN_CHUNK = 4  # tokens: below this a pass is mostly overhead


@dataclass
class PrefillPacer:
    """``chunk_decodes``: a prefill pass's target time, in decode passes; ``attention_span``: see the module."""

    chunk_decodes: float
    attention_span: float
    decode_s: float | None = None  # a decode pass's time (running average)
    rate: float | None = None  # seconds per weighted prefill token beyond the overhead (running average)
    owed: float = 0.0  # decode time the decoding sequences are owed before a started prompt's next chunk
    _seen: frozenset[str] = frozenset()

    @property
    def ready(self) -> bool:
        return self.decode_s is not None and self.rate is not None

    @property
    def target(self) -> float:
        """A step's prefill time, in seconds (inf until measured)."""
        return math.inf if self.decode_s is None else self.chunk_decodes * self.decode_s

    def weight(self, tokens: int, context: int) -> float:
        return tokens * (1 + (context + tokens / 2) / self.attention_span)

    def seconds(self, tokens: int, context: int) -> float:
        """The estimated time of a prefill pass of ``tokens`` after ``context`` cached positions."""
        if not self.ready:
            return 0.0
        return self.decode_s + self.rate * self.weight(tokens, context)

    def chunk(self, context: int, seconds: float) -> int:
        """The most tokens after ``context`` cached positions that a pass of ``seconds`` holds (at least
        ``MIN_CHUNK``; unbounded until measured)."""
        if not self.ready:
            return 1 << 62
        weight = max(seconds - self.decode_s, 0.0) / self.rate if self.rate > 0 else math.inf
        if math.isinf(weight):
            return 1 << 62
        # n * (1 + c/s) + n^2 / (2 s) = weight, for n
        span, linear = self.attention_span, 1 + context / self.attention_span
        tokens = span * (math.sqrt(linear * linear + 2 * weight / span) - linear)
        return max(MIN_CHUNK, int(tokens))

    def may_continue(self, decoding: bool) -> bool:
        """Whether a prompt already under way may take a chunk this step (its decoding neighbours are
        not owed time)."""
        if not decoding:
            self.owed = 0.0
        return self.owed <= 0

    def observed_decode(self, seconds: float) -> None:
        self.owed = max(0.0, self.owed - seconds)
        if self._first("decode"):
            return
        self.decode_s = seconds if self.decode_s is None else _average(self.decode_s, seconds)

    def observed_prefill(self, seconds: float, tokens: int, context: int, decoding: bool) -> None:
        if decoding:
            self.owed += seconds
        if self._first("prefill") or self.decode_s is None:
            return
        rate = max(seconds - self.decode_s, 0.0) / self.weight(tokens, context)
        self.rate = rate if self.rate is None else _average(self.rate, rate)

    def _first(self, kind: str) -> bool:
        if kind in self._seen:
            return False
        self._seen = self._seen | {kind}
        return True


def _average(old: float, new: float) -> float:
    return (1 - SMOOTHING) * old + SMOOTHING * new
