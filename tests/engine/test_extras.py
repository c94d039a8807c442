"""The vLLM sampling extras and the diffusion draft, on the embedded models (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import build_engine
from dfast_serve.engine.sampling import apply_min_p, penalize_repetition
from dfast_serve.engine import GenerationRequest, SamplingParams
from tests.engine.helpers import run_checked, text_of

STANDARD = DiffusionOptions(ultra_fast=False)
ENDS_EARLY = "Recite John 3:16."  # tiny-mdlm answers it in a few tokens, then EOS


def chat_ids(model, text: str) -> list[int]:
    return model.encode_chat([{"role": "user", "content": text}])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    penalize_repetition(logits, torch.tensor([0, 1, 1]), 2.0)
    assert logits.tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_min_p_cuts_relative_to_the_top_token_after_the_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = apply_min_p(logits.clone(), 0.2, 1.0)  # keep p >= 0.1
    assert torch.isfinite(kept).tolist() == [[True, True, True, False]]
    # at T = 2 the tempered distribution is flatter: 0.05 is sqrt(0.1) ≈ 0.32 of the top, kept
    assert torch.isfinite(apply_min_p(logits.clone(), 0.2, 2.0)).all()
    assert math.isclose(float(apply_min_p(logits.clone(), 0.9, 0.0)[0, 3]), math.log(0.05), rel_tol=1e-6)


def test_ignore_eos_gives_exactly_max_tokens_on_diffusion(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    ids = chat_ids(tiny_mdlm, ENDS_EARLY)
    plain, _ = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=32), STANDARD))
    assert plain[-1].finish_reason == "stop" and plain[-1].total_tokens < 32  # the model ends early by itself
    chunks, seq = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=32, ignore_eos=True), STANDARD))
    assert chunks[-1].finish_reason == "length" and chunks[-1].total_tokens == 32
    assert not set(seq.answer.tolist()) & seq.eos_ids


def test_min_tokens_keeps_eos_out_of_the_first_positions(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    ids = chat_ids(tiny_mdlm, ENDS_EARLY)
    plain, _ = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=32), STANDARD))
    at_least = plain[-1].total_tokens + 5
    chunks, seq = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=32, min_tokens=at_least),
                                                        STANDARD))
    assert not set(seq.answer[:at_least].tolist()) & seq.eos_ids
    assert chunks[-1].total_tokens >= at_least


def test_min_tokens_equal_to_max_tokens_gives_exactly_max_tokens(tiny_mdlm, smollm2):
    """``min_tokens == max_tokens`` is a valid request: EOS is banned everywhere, the answer is
    exactly ``max_tokens`` long and ends with "length" (on a prompt each model answers in fewer)."""
    for model, options, prompt in ((tiny_mdlm, STANDARD, ENDS_EARLY), (smollm2, None, "Say hi.")):
        engine = build_engine(model)
        ids = chat_ids(model, prompt)
        plain, _ = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=32), options))
        assert plain[-1].finish_reason == "stop" and plain[-1].total_tokens < 32
        chunks, seq = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=32, min_tokens=32), options))
        assert chunks[-1].finish_reason == "length" and chunks[-1].total_tokens == 32


def test_ignore_eos_and_repetition_penalty_on_ar(smollm2):
    engine = build_engine(smollm2)
    ids = chat_ids(smollm2, "Say hi.")
    chunks, _ = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=40, ignore_eos=True)))
    assert chunks[-1].total_tokens == 40 and chunks[-1].finish_reason == "length"
    ids = chat_ids(smollm2, "Write the word cat ten times.")
    _, plain = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=16)))
    _, penalized = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=16, repetition_penalty=1.5)))

    def repeats(seq) -> int:
        answer = seq.detokenizer.token_ids
        return len(answer) - len(set(answer))

    assert repeats(plain) >= 5 and repeats(penalized) < repeats(plain)


def test_skip_special_tokens_reaches_the_detokenizer(smollm2, tiny_mdlm):
    """EOS never reaches the text (it ends the answer); other special tokens show when asked."""
    for engine, model in ((build_engine(smollm2), smollm2), (build_engine(tiny_mdlm), tiny_mdlm)):
        ids = chat_ids(model, "Say hi.")
        special = model.tokenizer.convert_tokens_to_ids(model.tokenizer.all_special_tokens[0])
        word = model.tokenizer.encode(" hi")
        shown = engine.start(GenerationRequest(ids, SamplingParams(max_tokens=4, skip_special_tokens=False)))
        hidden = engine.start(GenerationRequest(ids, SamplingParams(max_tokens=4)))
        assert shown.detokenizer.add([special] + word) + shown.detokenizer.finish() == \
            model.tokenizer.all_special_tokens[0] + hidden.detokenizer.add([special] + word) + hidden.detokenizer.finish()


@pytest.mark.parametrize("options", [DiffusionOptions(), DiffusionOptions(cache="dual", block_length=8)],
                         ids=["ultra", "dual-cache"])
def test_draft_rides_every_pass_and_converges_to_the_answer(tiny_mdlm, options):
    engine = build_engine(tiny_mdlm)
    ids = chat_ids(tiny_mdlm, "Recite Genesis 1:1.")
    request = GenerationRequest(ids, SamplingParams(max_tokens=24, draft=True, ignore_eos=True), options)
    seq = engine.start(request)
    chunks = []
    while not seq.finished:
        engine.step_sequences([seq])
        got = seq.drain()
        assert len(got) == 1 and got[0].draft is not None  # one chunk a pass, each with its draft
        chunks += got
    final = text_of(chunks)
    assert chunks[-1].draft == "" and chunks[-1].nfe == len(chunks)
    assert len(chunks[0].draft) > 0  # a full-length guess after the first pass
    released = ""
    views = []
    for c in chunks:
        released += c.new_text
        views.append(released + c.draft)
    assert views[-1] == final
    assert len(set(views)) > 1  # the draft changed during generation
    # the plain stream is unchanged by asking for a draft
    plain = list(engine.generate(GenerationRequest(ids, SamplingParams(max_tokens=24, ignore_eos=True), options)))
    assert text_of(plain) == final
