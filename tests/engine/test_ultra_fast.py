"""Ultra-fast streaming policies, measured in forward passes (never in time)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dfast_serve.config import DiffusionOptions, UltraFastConfig, resolve_diffusion_options
from dfast_serve.engine import build_engine
from dfast_serve.engine import GenerationRequest, SamplingParams
from tests.engine.helpers import check_chunk_invariants

PROMPTS = ["Recite Genesis 1:1.", "Continue: And God said", "Recite Psalms 23:1.", "Recite John 3:16.",
           "Recite Exodus 20:3.", "Continue: In the beginning"]


def ultra(**overrides) -> DiffusionOptions:
    cfg = UltraFastConfig(**overrides)
    return DiffusionOptions(ultra_fast=True, ultra_fast_config=cfg)


def run(model, prompt, options, max_tokens=48, **params):
    ids = model.encode_chat([{"role": "user", "content": prompt}])
    return list(build_engine(model).generate(GenerationRequest(ids, SamplingParams(max_tokens=max_tokens, **params), options)))


def first_decided_and_first_text(model, prompt, options, max_tokens=48) -> tuple[int, int]:
    """The pass that decided answer position 0, and the pass of the first chunk with text."""
    engine = build_engine(model)
    ids = model.encode_chat([{"role": "user", "content": prompt}])
    seq = engine.start(GenerationRequest(ids, SamplingParams(max_tokens=max_tokens), options))
    decided_at = text_at = None
    chunks = []
    while not seq.finished:
        engine.step_sequences([seq])
        chunks += seq.drain()
        if decided_at is None and bool(seq.decided[0]):
            decided_at = seq.nfe
        if text_at is None and any(c.new_text for c in chunks):
            text_at = seq.nfe
    check_chunk_invariants(chunks)
    return decided_at, text_at


def test_instant_first_token_after_exactly_one_forward_pass(tiny_mdlm):
    off_first = []
    for prompt in PROMPTS:
        on = run(tiny_mdlm, prompt, ultra())
        check_chunk_invariants(on)
        assert on[0].nfe == 1 and on[0].new_text
        off = run(tiny_mdlm, prompt, ultra(enable_instant_first_token=False))
        check_chunk_invariants(off)
        off_first.append(off[0].nfe)
        # without the reveal, the first text streams at the pass the schedule decides position 0
        assert first_decided_and_first_text(tiny_mdlm, prompt, ultra(enable_instant_first_token=False)) == \
            (off[0].nfe, off[0].nfe)
    assert max(off_first) > 1  # without the reveal, the first token waits for the schedule


@pytest.mark.parametrize("first_token_steps", [1, 3, 8])
def test_first_token_steps_is_the_pass_of_the_first_text(tiny_mdlm, first_token_steps):
    for prompt in PROMPTS[:3]:
        chunks = run(tiny_mdlm, prompt, ultra(first_token_steps=first_token_steps, enable_early_stop=False))
        check_chunk_invariants(chunks)
        assert chunks[0].nfe == first_token_steps and chunks[0].new_text


def tokens_visible_after(chunks, nfe: int) -> int:
    return max((c.total_tokens for c in chunks if c.nfe <= nfe), default=0)


def test_lower_stream_threshold_shows_more_tokens_early(tiny_mdlm):
    low = high = 0
    for prompt in PROMPTS:
        low += tokens_visible_after(run(tiny_mdlm, prompt, ultra(stream_confidence_threshold=0.05, enable_early_stop=False)), 3)
        high += tokens_visible_after(run(tiny_mdlm, prompt, ultra(stream_confidence_threshold=0.99, enable_early_stop=False)), 3)
    assert low > high


def test_early_stop_spends_fewer_forward_passes(tiny_mdlm):
    with_stop = without = 0
    for prompt in PROMPTS:
        kw = dict(stream_confidence_threshold=1.0, stream_every_n_tokens=0, min_steps=2, max_steps=64)
        with_stop += run(tiny_mdlm, prompt, ultra(early_stop_confidence=0.5, early_stop_min_progress=0.1, **kw), max_tokens=64)[-1].nfe
        without += run(tiny_mdlm, prompt, ultra(enable_early_stop=False, **kw), max_tokens=64)[-1].nfe
    assert with_stop < without


def test_steps_caps_the_passes_but_never_below_min_steps(tiny_mdlm):
    quiet = dict(stream_confidence_threshold=1.0, stream_every_n_tokens=0, enable_early_stop=False,
                 enable_instant_first_token=False, schedule="uniform", steps_per_block=32)
    # EOS banned, so the answer cannot end before the budget's last pass: the pass count is the budget
    for steps, min_steps, expected in ((1, 1, 1), (2, 8, 8), (5, 8, 8), (12, 8, 12), (40, 8, 32)):
        options = DiffusionOptions(steps=steps, block_length=32, ultra_fast=True,
                                   ultra_fast_config=UltraFastConfig(min_steps=min_steps, max_steps=32, **quiet))
        chunks = run(tiny_mdlm, PROMPTS[0], options, max_tokens=32, ignore_eos=True)
        assert (chunks[-1].nfe, chunks[-1].total_tokens) == (expected, 32), (steps, min_steps)
    # the exact bounds, multi-block and with every policy on, are in test_scheduler_semantics.py


def test_stream_every_n_tokens_bounds_the_gap_between_chunks(tiny_mdlm):
    quiet = dict(stream_confidence_threshold=1.0, enable_early_stop=False, enable_instant_first_token=False,
                 schedule="uniform", min_steps=32, max_steps=32)
    longest_gap_without_fallback = 0
    for prompt in PROMPTS[:3]:
        every = run(tiny_mdlm, prompt, ultra(stream_every_n_tokens=1, **quiet), max_tokens=32)
        never = run(tiny_mdlm, prompt, ultra(stream_every_n_tokens=0, **quiet), max_tokens=32)
        gaps = [b.nfe - a.nfe for a, b in zip(every, every[1:])]
        assert every[0].nfe == 1 and max(gaps, default=1) <= 1  # a chunk after every forward pass
        never_gaps = [never[0].nfe] + [b.nfe - a.nfe for a, b in zip(never, never[1:])]
        longest_gap_without_fallback = max(longest_gap_without_fallback, *never_gaps)
    assert longest_gap_without_fallback > 1  # without the fallback the stream does stall


def test_all_policies_off_with_uniform_schedule_equals_standard_path(tiny_mdlm):
    off = dict(enable_instant_first_token=False, enable_early_stop=False, schedule="uniform", steps_per_block=24,
               stream_confidence_threshold=1.0, stream_every_n_tokens=0, min_steps=1, max_steps=4096)
    for prompt in PROMPTS:
        for temperature, seed in ((0.0, 0), (0.9, 5)):
            standard = run(tiny_mdlm, prompt, DiffusionOptions(ultra_fast=False), temperature=temperature, seed=seed)
            quiet = run(tiny_mdlm, prompt, ultra(**off), temperature=temperature, seed=seed)
            assert [c.new_text for c in quiet] == [c.new_text for c in standard]
            assert [c.nfe for c in quiet] == [c.nfe for c in standard]


def test_ultra_fast_uses_fewer_forward_passes_than_standard(tiny_mdlm):
    fast = sum(run(tiny_mdlm, p, ultra(), max_tokens=64)[-1].nfe for p in PROMPTS)
    standard = sum(run(tiny_mdlm, p, DiffusionOptions(ultra_fast=False), max_tokens=64)[-1].nfe for p in PROMPTS)
    assert fast < standard


# ---- configuration ---------------------------------------------------------------------------

def test_env_and_request_reach_the_options_with_documented_precedence():
    env = {"DFASTLLM_ULTRA_FAST_STREAMING": "false", "DFASTLLM_INSTANT_FIRST_TOKEN": "0",
           "DFASTLLM_STREAM_CONFIDENCE_THRESHOLD": "0.6", "DFASTLLM_EARLY_STOP_CONFIDENCE": "0.9"}
    from_env = resolve_diffusion_options(environ=env)
    assert not from_env.ultra_fast
    assert not from_env.ultra_fast_config.enable_instant_first_token
    assert from_env.ultra_fast_config.stream_confidence_threshold == 0.6
    assert from_env.ultra_fast_config.early_stop_confidence == 0.9
    configured = {"ultra_fast": True, "ultra_fast_config": {"stream_confidence_threshold": 0.7}}
    yaml_over_env = resolve_diffusion_options(configured=configured, environ=env)
    assert yaml_over_env.ultra_fast and yaml_over_env.ultra_fast_config.stream_confidence_threshold == 0.7
    assert yaml_over_env.ultra_fast_config.early_stop_confidence == 0.9  # untouched env value kept
    request = {"ultra_fast_config": {"stream_confidence_threshold": 0.3}}
    top = resolve_diffusion_options(configured=configured, request=request, environ=env)
    assert top.ultra_fast_config.stream_confidence_threshold == 0.3
    assert resolve_diffusion_options(environ={}) == DiffusionOptions()


def test_env_reaches_the_scheduler(tiny_mdlm):
    on = resolve_diffusion_options(environ={})
    off = resolve_diffusion_options(environ={"DFASTLLM_INSTANT_FIRST_TOKEN": "false"})
    firsts_off = [run(tiny_mdlm, p, off)[0].nfe for p in PROMPTS]
    assert all(run(tiny_mdlm, p, on)[0].nfe == 1 for p in PROMPTS)
    assert max(firsts_off) > 1


@pytest.mark.parametrize("bad,field", [
    ({"stream_confidence_threshold": 1.5}, "stream_confidence_threshold"),
    ({"first_token_confidence_threshold": -0.1}, "first_token_confidence_threshold"),
    ({"early_stop_confidence": 2}, "early_stop_confidence"),
    ({"min_steps": 40, "max_steps": 8}, "min_steps"),
    ({"stream_every_n_tokens": -1}, "stream_every_n_tokens"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_invalid_values_are_refused_naming_the_option(bad, field):
    with pytest.raises(ValidationError) as err:
        resolve_diffusion_options(request={"ultra_fast_config": bad}, environ={})
    assert field in str(err.value)


def test_invalid_env_value_is_refused():
    with pytest.raises((ValueError, ValidationError), match="STREAM_CONFIDENCE_THRESHOLD|stream_confidence_threshold"):
        resolve_diffusion_options(environ={"DFASTLLM_STREAM_CONFIDENCE_THRESHOLD": "7"})
