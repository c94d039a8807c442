"""AR engine on the embedded SmolLM2-135M (no Ray)."""

from __future__ import annotations

from dfast_serve.engine.ar import AREngine
from dfast_serve.engine.types import GenerationRequest, SamplingParams
from tests.engine.helpers import check_chunk_invariants


def run(engine, ids, **params):
    return list(engine.generate(GenerationRequest(list(ids), SamplingParams(**params))))


def test_first_chunk_after_exactly_one_prefill_pass(smollm2):
    engine = AREngine(smollm2)
    ids = smollm2.encode_chat([{"role": "user", "content": "Why is the sky blue?"}])
    before = engine.forward_passes
    stream = engine.generate(GenerationRequest(ids, SamplingParams(max_tokens=8)))
    first = next(stream)
    assert first.is_first and first.new_text and first.nfe == 1
    assert engine.forward_passes - before == 1  # nothing generated ahead of the client
    rest = list(stream)
    chunks = [first, *rest]
    check_chunk_invariants(chunks)
    assert [c.nfe for c in chunks] == list(range(1, len(chunks) + 1))  # one pass per token
    assert chunks[-1].finish_reason == "length" and chunks[-1].total_tokens == 8


def test_greedy_is_coherent_and_deterministic(smollm2):
    engine = AREngine(smollm2)
    ids = smollm2.encode_chat([{"role": "user", "content": "What color is the sky on a clear day?"}])
    a = run(engine, ids, max_tokens=24)[-1].full_text
    assert a == run(engine, ids, max_tokens=24)[-1].full_text
    assert "blue" in a.lower()


def test_sampling_seed_top_k_top_p(smollm2):
    engine = AREngine(smollm2)
    ids = smollm2.encode_prompt("Once upon a time")
    a = run(engine, ids, max_tokens=12, temperature=1.0, top_p=0.95, seed=3)
    b = run(engine, ids, max_tokens=12, temperature=1.0, top_p=0.95, seed=3)
    assert a[-1].full_text == b[-1].full_text
    texts = {run(engine, ids, max_tokens=12, temperature=1.2, top_k=50, seed=s)[-1].full_text for s in range(4)}
    assert len(texts) > 1
    greedy = run(engine, ids, max_tokens=12)[-1].full_text
    assert run(engine, ids, max_tokens=12, temperature=1.0, top_k=1, seed=9)[-1].full_text == greedy


def test_eos_and_stop_string_across_tokens(smollm2):
    engine = AREngine(smollm2)
    ids = smollm2.encode_chat([{"role": "user", "content": "Say hello."}])
    done = run(engine, ids, max_tokens=64)
    assert done[-1].finish_reason == "stop" and done[-1].total_tokens < 64  # the model ended on EOS
    text = run(engine, smollm2.encode_chat([{"role": "user", "content": "Why is the sky blue?"}]), max_tokens=24)[-1].full_text
    words = text.split(" ")
    stop = words[3][-2:] + " " + words[4][:2]  # starts mid-token, spans two tokens
    chunks = run(engine, smollm2.encode_chat([{"role": "user", "content": "Why is the sky blue?"}]), max_tokens=24, stop=[stop])
    check_chunk_invariants(chunks)
    expected = text[: text.index(stop)]
    assert chunks[-1].full_text == expected and chunks[-1].finish_reason == "stop"
    assert all(expected.startswith(c.full_text) for c in chunks)
