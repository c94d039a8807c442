"""The standard diffusion path on the embedded tiny-mdlm (no Ray)."""

from __future__ import annotations

import torch
from torch import nn

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import build_engine
from dfast_serve.engine import GenerationRequest, SamplingParams
from dfast_serve.models.adapters import DiffusionLM
from tests.engine.helpers import run_checked, text_of

STANDARD = DiffusionOptions(ultra_fast=False)
PROMPTS = ["Recite Genesis 1:1.", "Continue: And God said", "Recite Psalms 23:1.", "Recite John 3:16."]


def run(engine, prompt_ids, max_tokens=32, options=STANDARD, **params):
    req = GenerationRequest(list(prompt_ids), SamplingParams(max_tokens=max_tokens, **params), options)
    return list(engine.generate(req))


def chat(model, text):
    return model.encode_chat([{"role": "user", "content": text}])


def llada_reference(model: DiffusionLM, prompt_ids: list[int], gen_len: int) -> list[int]:
    """Plain LLaDA low-confidence remasking, greedy: one token per step, steps == gen_len, one block."""
    x = torch.tensor([prompt_ids + [model.mask_token_id] * gen_len])
    for _ in range(gen_len):
        with torch.no_grad():
            logits = model.network(x)
        predicted = logits.argmax(-1)
        probability = torch.gather(logits.softmax(-1), -1, predicted[..., None])[..., 0]
        is_mask = x == model.mask_token_id
        confidence = torch.where(is_mask, probability, torch.tensor(-float("inf")))
        pick = int(confidence[0].argmax())
        x[0, pick] = predicted[0, pick]
    return x[0, len(prompt_ids):].tolist()


def test_matches_plain_llada_reference_token_for_token(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    gen_len = 24
    for prompt in PROMPTS[:3]:
        ids = chat(tiny_mdlm, prompt)
        reference = llada_reference(tiny_mdlm, ids, gen_len)
        options = DiffusionOptions(ultra_fast=False, steps=gen_len, block_length=gen_len)
        seq = engine.start(GenerationRequest(ids, SamplingParams(max_tokens=gen_len), options))
        while not seq.finished:
            engine.step_sequences([seq])
        ours = seq.answer.tolist()
        eos = next((i for i, t in enumerate(reference) if t in tiny_mdlm.eos_token_ids), gen_len - 1)
        assert ours[: eos + 1] == reference[: eos + 1]  # the engine stops once the prefix reaches EOS
        text = tiny_mdlm.tokenizer.decode([t for t in reference[:eos + 1] if t not in tiny_mdlm.eos_token_ids])
        assert text_of(seq.drain()) == text


def test_fixed_seed_is_deterministic_and_streaming_equals_final_text(tiny_mdlm):
    """Two runs with one seed decide the same canvas and stream the same chunks, and the streamed
    text is exactly the final answer: the decided tokens up to EOS, decoded in one go."""
    engine = build_engine(tiny_mdlm)
    ids = chat(tiny_mdlm, PROMPTS[1])
    for remasking in ("low_confidence", "random"):
        for options in (DiffusionOptions(ultra_fast=False, remasking=remasking), DiffusionOptions(remasking=remasking)):
            runs = []
            for _ in range(2):
                request = GenerationRequest(list(ids), SamplingParams(max_tokens=32, temperature=0.8, seed=7), options)
                seq = engine.start(request)
                chunks = []
                while not seq.finished:
                    engine.step_sequences([seq])
                    chunks += seq.drain()
                runs.append((chunks, seq))
            (a, seq_a), (b, seq_b) = runs
            assert seq_a.answer.tolist() == seq_b.answer.tolist()
            assert [(c.new_text, c.nfe, c.total_tokens) for c in a] == [(c.new_text, c.nfe, c.total_tokens) for c in b]
            answer = seq_a.answer.tolist()
            end = next((i for i, t in enumerate(answer) if t in tiny_mdlm.eos_token_ids), len(answer))
            assert seq_a.decided[:end].all()
            final = tiny_mdlm.tokenizer.decode(answer[:end], skip_special_tokens=True)
            assert text_of(a) == final and final
            assert a[-1].total_tokens == end


def test_different_seeds_sample_differently(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    ids = chat(tiny_mdlm, PROMPTS[0])
    texts = {text_of(run(engine, ids, temperature=1.5, seed=s, max_tokens=24)) for s in range(4)}
    assert len(texts) > 1


def test_chunk_invariants_and_streaming_starts_before_the_end(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    for prompt in PROMPTS:
        for options in (STANDARD, DiffusionOptions()):
            run_checked(engine, GenerationRequest(chat(tiny_mdlm, prompt), SamplingParams(max_tokens=48), options))
    chunks = run(engine, chat(tiny_mdlm, PROMPTS[0]), max_tokens=48, options=DiffusionOptions())
    assert len(chunks) > 1 and chunks[0].nfe < chunks[-1].nfe


def test_finish_reasons_length_eos_and_stop(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    ids = chat(tiny_mdlm, PROMPTS[0])
    # a long answer window: the model pads with EOS, so the stream ends with "stop" before max_tokens
    long_run = run(engine, ids, max_tokens=96)
    assert long_run[-1].finish_reason == "stop" and long_run[-1].total_tokens < 96
    # a window too short to finish the verse: "length"
    short = run(engine, ids, max_tokens=2)
    assert short[-1].finish_reason == "length" and short[-1].total_tokens == 2
    # a stop string taken from the answer itself
    text = text_of(long_run)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = run(engine, ids, max_tokens=96, stop=[stop])
    assert stopped[-1].finish_reason == "stop"
    assert text_of(stopped) == text[: text.index(stop)]


class ForcedAnswer(nn.Module):
    """A stand-in network whose logits spell a fixed answer (used to force rare tokens).

    Position i of the answer prefers ``answer[i]``; confidences rise towards the end so tokens
    are decided out of reading order, as real dLLMs do with their EOS tail.
    """

    def __init__(self, prompt_len: int, answer: list[int], vocab: int) -> None:
        super().__init__()
        self.prompt_len, self.answer, self.vocab = prompt_len, answer, vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, s = input_ids.shape
        logits = torch.zeros(b, s, self.vocab)
        for i, tok in enumerate(self.answer):
            logits[:, self.prompt_len + i, tok] = 5.0 + i * 0.1
        return logits


def test_streaming_never_emits_broken_utf8_or_stop_string(tiny_mdlm):
    answer_text = "Peace ☕ 你好 be with you. Amen and amen"
    answer = tiny_mdlm.tokenizer.encode(answer_text) + [tiny_mdlm.tokenizer.eos_token_id]
    prompt = chat(tiny_mdlm, "x")
    forced = DiffusionLM(
        tokenizer=tiny_mdlm.tokenizer, network=ForcedAnswer(len(prompt), answer, len(tiny_mdlm.tokenizer)),
        mask_token_id=tiny_mdlm.mask_token_id, eos_token_ids=tiny_mdlm.eos_token_ids,
    )
    engine = build_engine(forced)
    for options in (STANDARD, DiffusionOptions(), DiffusionOptions(ultra_fast=False, steps=len(answer))):
        chunks, _ = run_checked(engine, GenerationRequest(prompt, SamplingParams(max_tokens=len(answer) + 4), options))
        assert text_of(chunks) == answer_text and chunks[-1].finish_reason == "stop"
        stopped, _ = run_checked(engine, GenerationRequest(prompt, SamplingParams(max_tokens=len(answer) + 4,
                                                                                  stop=["Amen and"]), options))
        assert text_of(stopped) == "Peace ☕ 你好 be with you. "


def test_an_eos_terminated_answer_has_exact_text_and_usage(tiny_mdlm):
    """EOS ends the answer and is not part of it: neither in the text (even with
    ``skip_special_tokens: false``) nor in usage; what the model says after it is never sent."""
    words = tiny_mdlm.tokenizer.encode(" In the beginning God created")
    assert len(words) == 5
    eos = tiny_mdlm.tokenizer.eos_token_id
    answer = words + [eos] + tiny_mdlm.tokenizer.encode(" and the earth")
    prompt = chat(tiny_mdlm, "x")
    forced = DiffusionLM(
        tokenizer=tiny_mdlm.tokenizer, network=ForcedAnswer(len(prompt), answer, len(tiny_mdlm.tokenizer)),
        mask_token_id=tiny_mdlm.mask_token_id, eos_token_ids=tiny_mdlm.eos_token_ids,
    )
    engine = build_engine(forced)
    for options in (STANDARD, DiffusionOptions()):
        for skip in (True, False):
            chunks = run(engine, prompt, max_tokens=len(answer), options=options, skip_special_tokens=skip)
            assert text_of(chunks) == " In the beginning God created"
            assert (chunks[-1].total_tokens, sum(c.new_tokens for c in chunks)) == (5, 5)
            assert chunks[-1].finish_reason == "stop" and chunks[-1].is_final
