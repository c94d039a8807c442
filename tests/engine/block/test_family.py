"""The DiffusionGemma family (``engine/block/family.py``) on a stub model that records its passes: what it
refuses and why, what the encoder and each decoder pass receive, which requests share a decoder pass."""

from __future__ import annotations

import pytest
import torch

from dfast_serve.engine import EngineCore, GenerationRequest, SamplingParams
from dfast_serve.engine.block.family import BlockDiffusion, canvases_for
from dfast_serve.wire import APIError, DiffusionOptions, UltraFastConfig
from tests.engine.block.stub import Stub, peaked

SURE = lambda calls, canvases: peaked([5, 6, 7, 8], 50.0, rows=len(canvases))  # noqa: E731


def req(prompt=(3, 4), max_tokens=4, options=None, name="", **params) -> GenerationRequest:
    return GenerationRequest(list(prompt), SamplingParams(max_tokens=max_tokens, **params), options, request_id=name)


def refusal(family, request) -> tuple[str, str]:
    with pytest.raises(APIError) as refused:
        family.validate(request)
    assert refused.value.status == 400
    return refused.value.param, refused.value.message


@pytest.mark.parametrize("name, value", [("top_p", 0.5), ("top_k", 5), ("min_p", 0.1), ("repetition_penalty", 1.2)])
def test_sampling_settings_its_sampler_cannot_honour_are_refused_by_name(name, value):
    param, message = refusal(BlockDiffusion(Stub(SURE)), req(**{name: value}))
    assert param == name
    assert message == (f"{name} is not supported by DiffusionGemma models (their sampler draws from the whole "
                       f"tempered distribution)")


def test_masked_diffusion_options_are_refused_unless_they_are_the_models_defaults():
    family = BlockDiffusion(Stub(SURE))
    family.validate(req(options=DiffusionOptions()))
    family.validate(req(options=None))
    assert refusal(family, req(options=DiffusionOptions(block_length=16))) == (
        "dfast.block_length", "dfast.block_length does not apply to DiffusionGemma models: the canvas length is "
                              "the model's (4)")
    assert refusal(family, req(options=DiffusionOptions(cache="dual"))) == (
        "dfast.cache", "dfast.cache does not apply to DiffusionGemma models: it belongs to masked diffusion")
    for options, param in [(DiffusionOptions(remasking="random"), "dfast.remasking"),
                           (DiffusionOptions(threshold=0.5), "dfast.threshold"),
                           (DiffusionOptions(confidence="margin"), "dfast.confidence")]:
        assert refusal(family, req(options=options))[0] == param
    param, message = refusal(family, req(options=DiffusionOptions(ultra_fast_config=UltraFastConfig(min_steps=2))))
    assert param == "dfast.ultra_fast_config.min_steps"
    assert message.startswith("dfast.ultra_fast_config.min_steps does not apply to DiffusionGemma models (their "
                              "ultra-fast options: enable_instant_first_token, first_token_steps, hold_steps,")
    for name in ("schedule", "max_steps", "stream_every_n_tokens"):
        value = {"schedule": "uniform", "max_steps": 40, "stream_every_n_tokens": 9}[name]
        options = DiffusionOptions(ultra_fast_config=UltraFastConfig(**{name: value}))
        assert refusal(family, req(options=options))[0] == f"dfast.ultra_fast_config.{name}"
    family.validate(req(options=DiffusionOptions(ultra_fast_config=UltraFastConfig(hold_steps=5, first_token_steps=2))))
    server = DiffusionOptions(block_length=16, ultra_fast_config=UltraFastConfig(min_steps=2))
    BlockDiffusion(Stub(SURE), defaults=server).validate(req(options=server))  # the model's own: taken


def test_the_answer_must_fit_the_context_in_whole_canvases():
    assert [canvases_for(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    family = BlockDiffusion(Stub(SURE, max_context=20))
    family.validate(req(prompt=[1] * 12, max_tokens=8))
    param, message = refusal(family, req(prompt=[1] * 13, max_tokens=5))
    assert param == "max_tokens" and "(rounded up to 8 positions)" in message
    assert message.endswith("(its context; the answer is written in whole canvases of 4)")
    assert refusal(family, req(prompt=[], max_tokens=1))[0] == "prompt"
    with pytest.raises(ValueError, match="max_batch_size"):
        BlockDiffusion(Stub(SURE), max_batch_size=0)
    BlockDiffusion(Stub(SURE), max_batch_size=1)


def test_a_request_runs_the_models_steps_or_its_own_and_ultra_fast_only_when_asked():
    model = Stub(SURE)
    family = BlockDiffusion(model)
    assert family.start(req()).steps == 3 and family.start(req()).ultra is not None
    assert family.start(req(options=DiffusionOptions(steps=7))).steps == 7
    assert family.start(req(options=DiffusionOptions(ultra_fast=False))).ultra is None
    own = BlockDiffusion(model, defaults=DiffusionOptions(ultra_fast=False, steps=2))
    assert (own.start(req()).steps, own.start(req()).ultra) == (2, None)
    seq = family.start(req(prompt=(3, 4, 5), max_tokens=8, options=DiffusionOptions(ultra_fast=False)))
    assert seq.to_encode.tolist() == [[3, 4, 5]] and seq.canvas is None and seq.encoded == 0
    engine = EngineCore(family)
    while not seq.finished:
        engine.step_sequences([seq])
    assert (seq.encoder_passes, seq.encoded, seq.passes_per_block) == (2, 7, [3, 3])  # the prompt, one canvas


def test_the_prompt_then_each_finished_canvas_is_encoded_once_at_its_position():
    model = Stub(SURE)
    family = BlockDiffusion(model)
    engine = EngineCore(family)
    engine.add(req(prompt=(3, 4, 5), max_tokens=8, options=DiffusionOptions(ultra_fast=False)), "r")
    chunks = []
    while engine.has_work:
        for out in engine.step():
            assert out.error is None
            chunks += out.chunks
    assert model.encoded == [([3, 4, 5], 0), ([5, 6, 7, 8], 3)]  # not the last canvas: the answer ended
    assert family.encoder_passes == 2 and engine.forward_passes == 2 + 6
    assert [d.starts for d in model.denoised] == [[3]] * 3 + [[7]] * 3
    assert [d.cache for d in model.denoised] == [[3, 4, 5]] * 3 + [[3, 4, 5, 5, 6, 7, 8]] * 3
    assert "".join(c.new_text for c in chunks) == "w5 w6 w7 w8 " * 2


def test_decoder_passes_group_equal_cache_lengths_up_to_max_batch_size():
    model = Stub(SURE)
    family = BlockDiffusion(model, max_batch_size=2)
    engine = EngineCore(family)
    standard = DiffusionOptions(ultra_fast=False)
    seqs = [family.start(req(prompt=p, options=standard, name=n))
            for p, n in [((1, 2), "a"), ((3, 4), "b"), ((5, 6, 7), "c"), ((8, 9), "d")]]
    phases = []
    inner = family.forward

    def forward(pass_):
        phases.append((pass_.phase, [s.request.request_id for s in pass_.sequences]))
        return inner(pass_)

    family.forward = forward
    engine.step_sequences(seqs)
    assert phases == [("encode", ["a"]), ("encode", ["b"]), ("encode", ["c"]), ("encode", ["d"]),
                      ("denoise", ["a", "b"]), ("denoise", ["d"]), ("denoise", ["c"])]
    seqs[0].fail(RuntimeError("gone"))
    phases.clear()
    engine.step_sequences(seqs)
    assert phases == [("denoise", ["b", "d"]), ("denoise", ["c"])]  # no encode pass: nothing new is final


def test_self_conditioning_reaches_the_decoder_after_a_rows_first_pass_with_a_mask_for_mixed_batches():
    model = Stub(SURE)
    family = BlockDiffusion(model, max_batch_size=4)
    engine = EngineCore(family)
    standard = DiffusionOptions(ultra_fast=False, steps=3)
    first = family.start(req(prompt=(1, 2), options=standard))
    engine.step_sequences([first])
    assert model.denoised[-1].self_conditioning is None and model.denoised[-1].mask is None
    late = family.start(req(prompt=(3, 4), options=standard))
    engine.step_sequences([first, late])
    mixed = model.denoised[-1]
    assert mixed.mask.tolist() == [True, False]
    assert torch.equal(mixed.self_conditioning[1], torch.zeros(4, 32))
    assert torch.allclose(mixed.self_conditioning[0], SURE(1, [0])[0] / 0.8)  # pass 1's logits over t_max
    assert mixed.canvases.shape == (2, 4)
    engine.step_sequences([first, late])
    both = model.denoised[-1]
    assert both.mask is None and both.self_conditioning.shape == (2, 4, 32)


def test_by_default_eight_requests_share_a_decoder_pass_and_the_ninth_waits_for_the_next():
    model = Stub(SURE)
    family = BlockDiffusion(model)
    engine = EngineCore(family)
    seqs = [family.start(req(options=DiffusionOptions(ultra_fast=False), name=str(i))) for i in range(9)]
    engine.step_sequences(seqs)
    assert [len(d.canvases) for d in model.denoised] == [8, 1]


def test_a_batch_size_under_one_is_refused_with_its_reason():
    with pytest.raises(ValueError) as refused:
        BlockDiffusion(Stub(SURE), max_batch_size=0)
    assert str(refused.value) == "max_batch_size must be at least 1"


def test_a_stop_string_ends_the_answer_before_it():
    model = Stub(SURE)
    family = BlockDiffusion(model)
    engine = EngineCore(family)
    engine.add(req(max_tokens=8, stop=["w7"], options=DiffusionOptions(ultra_fast=False)), "r")
    chunks = []
    while engine.has_work:
        for out in engine.step():
            assert out.error is None
            chunks += out.chunks
    assert "".join(c.new_text for c in chunks) == "w5 w6 "
    assert chunks[-1].finish_reason == "stop" and len(model.encoded) == 1


def test_self_conditioning_reaches_the_decoder_in_the_models_embedding_dtype():
    model = Stub(SURE, embedding_dtype=torch.bfloat16)
    family = BlockDiffusion(model, max_batch_size=4)
    engine = EngineCore(family)
    standard = DiffusionOptions(ultra_fast=False)
    first = family.start(req(prompt=(1, 2), options=standard))
    engine.step_sequences([first])
    late = family.start(req(prompt=(3, 4), options=standard))
    engine.step_sequences([first, late])
    assert model.denoised[-1].self_conditioning.dtype == torch.bfloat16  # a mixed batch: one row zeros
    engine.step_sequences([first, late])
    assert model.denoised[-1].self_conditioning.dtype == torch.bfloat16
