"""AR engine on the embedded SmolLM2-135M (no Ray)."""

from __future__ import annotations

from dfast_serve.engine import build_engine
from dfast_serve.engine import GenerationRequest, SamplingParams
from tests.engine.helpers import check_chunk_invariants, run_checked, text_of


def run(engine, ids, **params):
    return list(engine.generate(GenerationRequest(list(ids), SamplingParams(**params))))


def test_first_chunk_after_exactly_one_prefill_pass(smollm2):
    engine = build_engine(smollm2)
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
    engine = build_engine(smollm2)
    ids = smollm2.encode_chat([{"role": "user", "content": "What color is the sky on a clear day?"}])
    a = text_of(run(engine, ids, max_tokens=24))
    assert a == text_of(run(engine, ids, max_tokens=24))
    assert "blue" in a.lower()


def test_sampling_seed_top_k_top_p(smollm2):
    engine = build_engine(smollm2)
    ids = smollm2.encode_prompt("Once upon a time")
    a = run(engine, ids, max_tokens=12, temperature=1.0, top_p=0.95, seed=3)
    b = run(engine, ids, max_tokens=12, temperature=1.0, top_p=0.95, seed=3)
    assert text_of(a) == text_of(b)
    texts = {text_of(run(engine, ids, max_tokens=12, temperature=1.2, top_k=50, seed=s)) for s in range(4)}
    assert len(texts) > 1
    greedy = text_of(run(engine, ids, max_tokens=12))
    assert text_of(run(engine, ids, max_tokens=12, temperature=1.0, top_k=1, seed=9)) == greedy


def test_eos_and_stop_string_across_tokens(smollm2):
    engine = build_engine(smollm2)
    ids = smollm2.encode_chat([{"role": "user", "content": "Say hello."}])
    done = run(engine, ids, max_tokens=64)
    assert done[-1].finish_reason == "stop" and done[-1].total_tokens < 64  # the model ended on EOS
    text = text_of(run(engine, smollm2.encode_chat([{"role": "user", "content": "Why is the sky blue?"}]), max_tokens=24))
    words = text.split(" ")
    stop = words[3][-2:] + " " + words[4][:2]  # starts mid-token, spans two tokens
    request = GenerationRequest(smollm2.encode_chat([{"role": "user", "content": "Why is the sky blue?"}]),
                                SamplingParams(max_tokens=24, stop=[stop]))
    chunks, seq = run_checked(engine, request)
    expected = text[: text.index(stop)]
    assert text_of(chunks) == expected and chunks[-1].finish_reason == "stop"
    # usage is exactly the fewest generated tokens whose text covers what was kept (the stop string
    # starts inside the last of them), not one more or one fewer
    ids, used = seq.detokenizer.token_ids, chunks[-1].total_tokens

    def decoded(n: int) -> str:
        return smollm2.tokenizer.decode(ids[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    assert decoded(used).startswith(expected) and len(decoded(used - 1)) < len(expected)
    assert used == sum(c.new_tokens for c in chunks) < 24


def test_the_lm_head_runs_on_the_last_position_only(smollm2):
    """Only the last position's logits are read: prefill must not project every prompt position."""
    engine = build_engine(smollm2)
    ids = smollm2.encode_chat([{"role": "user", "content": "Why is the sky blue?"}])
    seen: list[int] = []
    hook = smollm2.network.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    try:
        run(engine, ids, max_tokens=3)
        first, second = engine.start(GenerationRequest(list(ids), SamplingParams(max_tokens=2))), \
            engine.start(GenerationRequest(list(ids[:-2]), SamplingParams(max_tokens=2)))
        engine.step_sequences([first, second])  # a batched prefill (left-padded rows) as well
    finally:
        hook.remove()
    assert len(ids) > 1 and seen and set(seen) == {1}
