"""Test helpers: run an engine to completion and check the stream's invariants."""

from __future__ import annotations

from dfast_serve.engine.types import StreamingChunk


def check_chunk_invariants(chunks: list[StreamingChunk]) -> None:
    assert chunks, "no chunk"
    assert sum(c.is_first for c in chunks) == 1 and chunks[0].is_first
    assert sum(c.is_final for c in chunks) == 1 and chunks[-1].is_final
    text = ""
    last_total, last_nfe = 0, 0
    for c in chunks:
        text += c.new_text
        assert c.full_text == text
        assert c.total_tokens >= last_total and c.nfe >= last_nfe
        assert 0.0 <= c.progress <= 1.0
        last_total, last_nfe = c.total_tokens, c.nfe
    assert chunks[-1].progress == 1.0
    assert chunks[-1].finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert "\ufffd" not in text
