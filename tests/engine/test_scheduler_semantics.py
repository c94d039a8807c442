"""The diffusion scheduler's options mean what they say (issue: scheduler semantics).

Each test here reproduces a defect the earlier scheduler had: a stop string that changed the
decided tokens, step bounds that were not bounds, passes that shrank as max_tokens grew, an
instant reveal that read the detokenizer, and usage that counted text a stop string cut.
"""

from __future__ import annotations

import torch
from torch import nn

from dfast_serve.engine import build_engine
from dfast_serve.wire.options import DiffusionOptions, UltraFastConfig
from dfast_serve.engine import GenerationRequest, SamplingParams
from dfast_serve.models.adapters import DiffusionLM
from tests.engine.helpers import FailsOnLongCanvas, run_checked, text_of

PROMPTS = ["Recite Genesis 1:1.", "Continue: And God said", "Recite Psalms 23:1."]


def chat(model, text: str) -> list[int]:
    return model.encode_chat([{"role": "user", "content": text}])


def answer_up_to_eos(seq) -> list[int]:
    ids = seq.answer[: seq.streamed].tolist()
    return ids[: next((i for i, t in enumerate(ids) if t in seq.eos_ids), len(ids))]


class Spelled(nn.Module):
    """A stand-in network whose logits at answer position i prefer ``answer[i]`` with logit ``strength``
    (all other tokens 0), whatever the canvas: confidences are set by hand, no EOS is ever proposed."""

    def __init__(self, prompt_len: int, answer: list[int], vocab: int, strength: float) -> None:
        super().__init__()
        self.prompt_len, self.answer, self.vocab, self.strength = prompt_len, answer, vocab, strength
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, s = input_ids.shape
        logits = torch.zeros(b, s, self.vocab)
        for i, tok in enumerate(self.answer[: s - self.prompt_len]):
            strength = self.strength[i] if isinstance(self.strength, list) else self.strength
            logits[:, self.prompt_len + i, tok] = strength
        return logits


def spelled_model(tiny_mdlm, prompt: list[int], answer: list[int], strength: float | list[float]) -> DiffusionLM:
    return DiffusionLM(tokenizer=tiny_mdlm.tokenizer, network=Spelled(len(prompt), answer, len(tiny_mdlm.tokenizer), strength),
                       mask_token_id=tiny_mdlm.mask_token_id, eos_token_ids=tiny_mdlm.eos_token_ids)


def words(tiny_mdlm, n: int) -> list[int]:
    ids = tiny_mdlm.tokenizer.encode(" and the LORD said unto Moses" * 40)
    return ids[:n]


# ---- 1. a stop string only cuts ----------------------------------------------------------------
def test_a_stop_string_that_never_matches_changes_no_decided_token(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    for prompt in PROMPTS:
        ids = chat(tiny_mdlm, prompt)
        plain_chunks, plain = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=48), DiffusionOptions()))
        for stop in ("And\x01zz", "the\x02LORD", " unto\x03"):  # their starts occur, they never do
            assert stop not in text_of(plain_chunks)
            chunks, seq = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=48, stop=[stop]),
                                                                DiffusionOptions()))
            assert answer_up_to_eos(seq) == answer_up_to_eos(plain)
            assert text_of(chunks) == text_of(plain_chunks)
            assert seq.nfe == plain.nfe  # only when text is released may differ (held-back stop prefixes)


def test_the_instant_reveal_does_not_read_held_back_text(tiny_mdlm):
    """The first answer token is half a character: its text is held back, yet the reveal decides
    only what confidence says (here: the one token at the cursor), not extra tokens until text shows."""
    answer = tiny_mdlm.tokenizer.encode("你好 and the rest")
    assert "\ufffd" in tiny_mdlm.tokenizer.decode(answer[:1])  # really half a character
    prompt = chat(tiny_mdlm, "x")
    model = spelled_model(tiny_mdlm, prompt, answer, strength=5.0)  # p ~ 0.01: below every threshold
    engine = build_engine(model)
    seq = engine.start(GenerationRequest(prompt, SamplingParams(max_tokens=len(answer)), DiffusionOptions()))
    engine.step_sequences([seq])
    assert seq.decided.tolist()[:2] == [True, False]
    assert int(seq.decided.sum()) == 1


# ---- 2. the pass budget ----------------------------------------------------------------------
def test_max_steps_bounds_the_whole_request_across_many_blocks(tiny_mdlm):
    answer = words(tiny_mdlm, 128)
    prompt = chat(tiny_mdlm, "x")
    model = spelled_model(tiny_mdlm, prompt, answer, strength=5.0)  # never confident: nothing ends early
    engine = build_engine(model)
    for max_steps, steps in ((32, None), (32, 20), (12, None)):
        options = DiffusionOptions(block_length=2, steps=steps, ultra_fast_config=UltraFastConfig(max_steps=max_steps))
        chunks, seq = run_checked(engine, GenerationRequest(prompt, SamplingParams(max_tokens=128), options))
        assert chunks[-1].nfe == seq.nfe == (steps or max_steps)
        assert chunks[-1].finish_reason == "length" and chunks[-1].total_tokens == 128


def test_min_steps_is_a_lower_bound_unless_the_answer_ends(tiny_mdlm):
    prompt = chat(tiny_mdlm, "x")
    answer = words(tiny_mdlm, 48)
    model = spelled_model(tiny_mdlm, prompt, answer, strength=50.0)  # certain everywhere: one pass would do
    engine = build_engine(model)
    for min_steps, max_tokens, expected in ((8, 48, 8), (12, 48, 12), (8, 4, 4)):
        options = DiffusionOptions(ultra_fast_config=UltraFastConfig(min_steps=min_steps, max_steps=32))
        chunks, seq = run_checked(engine, GenerationRequest(prompt, SamplingParams(max_tokens=max_tokens), options))
        assert seq.nfe == expected
        assert text_of(chunks) == tiny_mdlm.tokenizer.decode(answer[:max_tokens])


def test_the_block_where_the_answer_ends_gets_the_same_passes_whatever_max_tokens(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    for prompt in PROMPTS:
        spent = []
        for max_tokens in (32, 64, 128):
            chunks, seq = run_checked(engine, GenerationRequest(chat(tiny_mdlm, prompt), SamplingParams(max_tokens=max_tokens),
                                                                DiffusionOptions()))
            ids = seq.answer[: seq.streamed].tolist()
            eos = next(i for i, t in enumerate(ids) if t in seq.eos_ids)
            assert chunks[-1].finish_reason == "stop"
            spent.append(seq.passes_per_block[eos // 32])
        assert spent[0] == spent[1] == spent[2], spent


def test_passes_a_block_leaves_unspent_go_to_the_next_block(tiny_mdlm):
    """Block 1 is certain and done in one pass: its 3 unspent passes raise block 2's allowance
    from 4 to 7 (the uniform schedule spends them, one token a pass); block 3 is back to 4."""
    prompt = chat(tiny_mdlm, "x")
    answer = words(tiny_mdlm, 24)
    model = spelled_model(tiny_mdlm, prompt, answer, strength=[50.0] * 8 + [5.0] * 16)
    engine = build_engine(model)
    options = DiffusionOptions(block_length=8, ultra_fast_config=UltraFastConfig(
        steps_per_block=4, min_steps=1, max_steps=4096, schedule="uniform", enable_early_stop=False,
        enable_instant_first_token=False, stream_every_n_tokens=0))
    chunks, seq = run_checked(engine, GenerationRequest(prompt, SamplingParams(max_tokens=24), options))
    assert seq.passes_per_block == [1, 7, 4]
    assert chunks[-1].nfe == 12 and chunks[-1].total_tokens == 24
    assert text_of(chunks) == tiny_mdlm.tokenizer.decode(answer)


def test_the_default_schedule_front_loads():
    options = DiffusionOptions()
    assert options.ultra_fast_config.steps_per_block < options.block_length  # else front-loading is [1] * n
    from dfast_serve.engine.masked.schedule import front_loaded_schedule

    schedule = front_loaded_schedule(options.block_length, options.ultra_fast_config.steps_per_block)
    assert schedule[:3] == [1, 2, 4] and len(schedule) > 3


def test_a_sequence_uses_the_front_loaded_schedule_by_default(tiny_mdlm):
    seq = build_engine(tiny_mdlm).start(GenerationRequest(chat(tiny_mdlm, "x"), SamplingParams(max_tokens=64),
                                                             DiffusionOptions()))
    assert seq.block_schedule[:3] == [1, 2, 4]


# ---- 5. usage ----------------------------------------------------------------------------------
def test_usage_counts_only_the_tokens_before_a_stop_string(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    ids = chat(tiny_mdlm, PROMPTS[0])
    full, _ = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=48), DiffusionOptions(ultra_fast=False)))
    text = text_of(full)
    stop = text[12:16]
    chunks, seq = run_checked(engine, GenerationRequest(ids, SamplingParams(max_tokens=48, stop=[stop]),
                                                        DiffusionOptions(ultra_fast=False)))
    kept = text_of(chunks)
    assert kept == text[: text.index(stop)]
    # usage = the fewest answer tokens whose text covers what was kept (the last one holds the cut)
    answer, used = seq.answer.tolist(), chunks[-1].total_tokens
    assert tiny_mdlm.tokenizer.decode(answer[:used]).startswith(kept)
    assert len(tiny_mdlm.tokenizer.decode(answer[: used - 1])) < len(kept)
    assert used < full[-1].total_tokens


# ---- 7/8. errors stay with their request; an empty prompt is refused -----------------------------
def test_a_failing_request_fails_alone_and_its_batch_mate_is_unchanged(tiny_mdlm):
    short_ids, long_ids = chat(tiny_mdlm, "Recite Genesis 1:1."), chat(tiny_mdlm, "Recite " + "and the LORD " * 40)
    limit = len(short_ids) + 24
    fragile = DiffusionLM(tokenizer=tiny_mdlm.tokenizer, network=FailsOnLongCanvas(tiny_mdlm.network, limit),
                          mask_token_id=tiny_mdlm.mask_token_id, eos_token_ids=tiny_mdlm.eos_token_ids,
                          padded_batches=True, max_context=tiny_mdlm.max_context)
    engine = build_engine(fragile)
    options = DiffusionOptions(ultra_fast=False)
    alone, _ = run_checked(engine, GenerationRequest(short_ids, SamplingParams(max_tokens=24), options))
    short = engine.start(GenerationRequest(short_ids, SamplingParams(max_tokens=24), options))
    long = engine.start(GenerationRequest(long_ids, SamplingParams(max_tokens=24), options))
    chunks = []
    while not short.finished:
        engine.step_sequences([s for s in (short, long) if not s.finished])
        chunks += short.drain()
    assert isinstance(long.error, RuntimeError) and long.finished
    assert short.error is None and text_of(chunks) == text_of(alone)


def test_an_empty_prompt_is_refused_naming_the_field_it_came_from(tiny_mdlm):
    import pytest

    from dfast_serve.wire import APIError

    for field in ("prompt", "messages"):
        with pytest.raises(APIError) as refused:
            build_engine(tiny_mdlm).start(GenerationRequest([], SamplingParams(max_tokens=4), prompt_field=field))
        assert (refused.value.status, refused.value.param, str(refused.value)) == (400, field,
                                                                                  f"{field} encodes to no tokens")
