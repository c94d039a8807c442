"""The ``engine: vllm`` mapping alone (``serve/vllm_mapping.py``): no vLLM, no Ray, milliseconds. vLLM's
outputs are stood in for by plain objects with the attributes the mapping reads; the real engine is
``test_vllm_engine.py``."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from dfast_serve.serve.vllm_mapping import ChunkStream, context_error, sampling_kwargs
from dfast_serve.wire import APIError, SamplingParams


def output(text: str, tokens: list[int], finish_reason: str | None = None) -> SimpleNamespace:
    completion = SimpleNamespace(text=text, token_ids=tokens, finish_reason=finish_reason)
    return SimpleNamespace(outputs=[completion], finished=finish_reason is not None)


def test_every_sampling_field_maps_or_is_refused():
    """Each of our fields reaches vLLM under its name with its value, except ``draft``, which has no vLLM
    equivalent: a field added to SamplingParams without a mapping fails here."""
    params = SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, top_k=20, seed=3, stop=["x"], ignore_eos=True,
                            min_tokens=2, repetition_penalty=1.2, min_p=0.1, skip_special_tokens=False)
    kwargs = sampling_kwargs(params)
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    assert set(kwargs) - {"n"} == fields - {"draft"}
    assert all(kwargs[name] == getattr(params, name) for name in fields - {"draft"})
    assert kwargs["n"] == 1
    with pytest.raises(APIError) as refused:
        sampling_kwargs(dataclasses.replace(params, draft=True))
    assert (refused.value.status, refused.value.param) == (400, "draft")


def test_context_error_names_the_prompt_or_max_tokens():
    assert context_error(10, 6, 16, "prompt") is None
    too_long_answer = context_error(10, 7, 16, "messages")
    assert (too_long_answer.param, too_long_answer.code) == ("max_tokens", "context_length_exceeded")
    too_long_prompt = context_error(16, 1, 16, "messages")
    assert (too_long_prompt.param, too_long_prompt.code) == ("messages", "context_length_exceeded")


def test_chunks_carry_deltas_counts_and_the_finish_reason():
    stream = ChunkStream(prompt_tokens=5, max_tokens=4)
    first = stream.chunk(output("The", [10]))
    assert (first.new_text, first.new_tokens, first.total_tokens, first.is_first, first.is_final) == ("The", 1, 1, True, False)
    assert first.progress == 0.25 and first.prompt_tokens == 5 and first.target_tokens == 4
    assert stream.chunk(output("", [11])) is None  # held back (a possible stop string): nothing to send
    second = stream.chunk(output(" cat", [12]))
    assert (second.new_text, second.new_tokens, second.total_tokens, second.is_first) == (" cat", 2, 3, False)
    last = stream.chunk(output("", [2], "stop"))  # EOS: no text, final
    assert (last.new_tokens, last.total_tokens, last.is_final, last.finish_reason, last.progress) == (1, 4, True, "stop", 1.0)
    assert last.nfe == 4


@pytest.mark.parametrize(("vllm_reason", "ours"), [("length", "length"), ("abort", "cancelled"), ("stop", "stop")])
def test_finish_reasons(vllm_reason, ours):
    assert ChunkStream(1, 4).chunk(output("a", [1], vllm_reason)).finish_reason == ours


def test_an_unknown_finish_reason_is_an_error_not_a_silent_stop():
    with pytest.raises(RuntimeError, match="error"):
        ChunkStream(1, 4).chunk(output("", [], "error"))
