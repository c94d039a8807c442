"""Test helpers: run an engine to completion and check the stream against the tokenizer itself."""

from __future__ import annotations

from torch import nn

from dfast_serve.engine import GenerationRequest, StreamingChunk


def text_of(chunks: list[StreamingChunk]) -> str:
    return "".join(c.new_text for c in chunks)


def check_chunk_invariants(chunks: list[StreamingChunk]) -> None:
    assert chunks, "no chunk"
    assert sum(c.is_first for c in chunks) == 1 and chunks[0].is_first
    assert sum(c.is_final for c in chunks) == 1 and chunks[-1].is_final
    last_total, last_nfe = 0, 0
    for c in chunks:
        assert c.total_tokens >= last_total and c.nfe >= last_nfe
        assert c.new_tokens == c.total_tokens - last_total
        assert 0.0 <= c.progress <= 1.0
        last_total, last_nfe = c.total_tokens, c.nfe
    assert chunks[-1].progress == 1.0
    assert chunks[-1].finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert "\ufffd" not in text_of(chunks)


def committed_ids(seq) -> list[int]:
    """The answer tokens a sequence decided in reading order (diffusion: its canvas; AR: what it sampled)."""
    if hasattr(seq, "answer"):
        return seq.answer[: seq.streamed].tolist()
    return list(seq.detokenizer.token_ids)


def run_checked(engine, request: GenerationRequest) -> tuple[list[StreamingChunk], object]:
    """Step one request alone; check the stream's invariants and that its text is what the
    tokenizer decodes from the committed ids, cut at the first EOS and the first stop string."""
    seq = engine.start(request)
    chunks: list[StreamingChunk] = []
    while not seq.finished:
        engine.step_sequences([seq])
        chunks += seq.drain()
    assert seq.error is None, seq.error
    check_chunk_invariants(chunks)
    ids = committed_ids(seq)
    eos = next((i for i, t in enumerate(ids) if t in seq.eos_ids), len(ids))
    tokenizer = engine.family.model.tokenizer
    decoded = tokenizer.decode(ids[:eos], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    cuts = [i for s in request.params.stop if (i := decoded.find(s)) != -1]
    expected = decoded[: min(cuts)] if cuts else decoded.rstrip("\ufffd")
    assert text_of(chunks) == expected
    return chunks, seq


def outcome(seq):
    assert seq.error is None, seq.error  # a request that failed alone and batched would otherwise compare equal
    tokens = seq.answer.tolist() if hasattr(seq, "answer") else None
    return tokens, "".join(c.new_text for c in seq.pending), seq.nfe, seq.finish_reason


def run_alone(engine, requests):
    results = []
    for request in requests:
        seq = engine.start(request)
        while not seq.finished:
            engine.step_sequences([seq])
        results.append(outcome(seq))
    return results


def run_joined(engine, requests, join_at):
    """All requests in one running list; request i joins before step ``join_at[i]``."""
    started, step = [], 0
    while len(started) < len(requests) or any(not s.finished for s in started):
        started += [engine.start(r) for r, at in zip(requests, join_at) if at == step]
        running = [s for s in started if not s.finished]
        if running:
            engine.step_sequences(running)
        step += 1
    return [outcome(s) for s in started]


class FailsOnLongCanvas(nn.Module):
    """tiny-mdlm's network that fails (as an out-of-memory would) on canvases longer than ``limit``."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, input_ids, **kwargs):
        if input_ids.shape[1] > self.limit:
            raise RuntimeError("out of memory (simulated)")
        return self.inner(input_ids, **kwargs)


def llada_like(model):
    """tiny-mdlm's network behind the LLaDA adapter (which ignores attention masks, so cannot pad), with
    tiny-mdlm's own mask and EOS ids (LLaDA's defaults are outside its vocabulary)."""
    import dataclasses

    from dfast_serve.models.adapters import wrap_llada

    return dataclasses.replace(wrap_llada(model.network, model.tokenizer), mask_token_id=model.mask_token_id,
                               eos_token_ids=model.eos_token_ids)
