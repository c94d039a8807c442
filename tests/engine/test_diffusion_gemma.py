"""DiffusionGemma engine: transformers' own ``generate`` as the oracle, batching, streaming, drafts,
the options it refuses, and the ultra-fast policies on a stub whose logits are forced."""

from __future__ import annotations

import pytest
import torch

from dfast_serve.engine import BlockDiffusion, EngineCore, build_engine
from dfast_serve.wire import APIError
from dfast_serve.wire.options import DiffusionOptions, UltraFastConfig
from dfast_serve.engine import GenerationRequest, SamplingParams
from dfast_serve.models.diffusion_gemma import load_diffusion_gemma
from tests.engine.helpers import check_chunk_invariants
from tests.gemma import CANVAS, STEPS, StubGemma, load_tokenizer, peaked, tiny_checkpoint

PROMPT = [2, 5, 6, 7, 8]
STANDARD = DiffusionOptions(ultra_fast=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.set_num_threads(1)
    return load_diffusion_gemma(str(tiny_checkpoint(tmp_path_factory.mktemp("gemma"))), "tiny-gemma")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(tmp_path_factory.mktemp("gemma-tok"))


def request(max_tokens: int, seed: int = 123, prompt: list[int] = PROMPT, options: DiffusionOptions = STANDARD,
            **params) -> GenerationRequest:
    return GenerationRequest(list(prompt), SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed, **params),
                             options)


def run(engine, req):
    seq = engine.start(req)
    chunks = []
    while not seq.finished:
        engine.step_sequences([seq])
        assert seq.error is None
        chunks += seq.drain()
    return seq, chunks


def reference(model, max_tokens: int, seed: int, prompt: list[int] = PROMPT, streamer=None) -> list[int]:
    """transformers' generate with the same global seed: its answer cut at max_tokens and at the first EOS."""
    torch.manual_seed(seed)
    out = model.network.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, streamer=streamer)
    ids = out.sequences[0, len(prompt):].tolist()[:max_tokens]
    return ids[: ids.index(1)] if 1 in ids else ids


@pytest.mark.parametrize("max_tokens", [CANVAS, 2 * CANVAS + 4])
def test_final_tokens_equal_transformers_generate(model, max_tokens):
    engine = build_engine(model)
    assert isinstance(engine.family, BlockDiffusion)
    for seed in (0, 123):
        seq, chunks = run(engine, request(max_tokens, seed))
        assert seq.detokenizer.token_ids == reference(model, max_tokens, seed)
        check_chunk_invariants(chunks)


def test_max_tokens_not_a_multiple_of_the_canvas_denoises_the_last_canvas_whole_and_sends_its_head(model):
    engine = build_engine(model)
    seq, chunks = run(engine, request(2 * CANVAS + 3, seed=5))
    assert seq.finish_reason == "length" and chunks[-1].total_tokens == 2 * CANVAS + 3
    assert seq.passes_per_block == [STEPS] * 3  # random weights never stop a canvas early
    assert engine.family.encoder_passes == 3  # the prompt and the two finished canvases; the last one is never encoded


def test_standard_mode_commits_a_canvas_when_it_ends_and_drafts_every_step(model):
    """Text arrives once per canvas, at its last pass; every step's argmax canvas is the draft, and the
    argmax canvases are the ones transformers' streamer gets through ``put_draft``."""

    class DraftRecorder:
        def __init__(self):
            self.drafts = []

        def put(self, value):
            pass

        def put_draft(self, value):
            self.drafts.append(value[0].tolist())

        def end(self):
            pass

    engine = build_engine(model)
    recorder = DraftRecorder()
    reference(model, 2 * CANVAS, 7, streamer=recorder)
    seq = engine.start(request(2 * CANVAS, 7, draft=True))
    argmaxes, chunks = [], []
    while not seq.finished:
        engine.step_sequences([seq])
        argmaxes.append(seq.argmax.tolist())
        chunks += seq.drain()
    assert argmaxes == recorder.drafts
    with_text = [c for c in chunks if c.new_tokens]
    assert [c.nfe for c in with_text] == [STEPS, 2 * STEPS]
    assert all(c.draft for c in chunks if not c.is_final and c.nfe % STEPS)  # mid-canvas: a draft of the canvas
    first_draft = chunks[0].draft
    assert len(first_draft.split()) == CANVAS


def test_batched_equals_alone_with_per_row_generators(model):
    """Three requests of equal prompt length share decoder passes, a fourth (longer prompt) runs in its own;
    each row draws from its own generator, so every answer is what it is alone."""
    reqs = [request(CANVAS + 4, seed) for seed in (1, 2, 3)] + [request(CANVAS + 4, 4, prompt=PROMPT + [9, 10])]
    alone = [run(build_engine(model), r)[0].detokenizer.token_ids for r in reqs]
    engine = build_engine(model, max_batch_size=8)
    seqs = [engine.start(r) for r in reqs]
    while not all(s.finished for s in seqs):
        engine.step_sequences([s for s in seqs if not s.finished])
    assert [s.detokenizer.token_ids for s in seqs] == alone
    decoder_passes = engine.forward_passes - engine.family.encoder_passes
    assert decoder_passes == 2 * (2 * STEPS)  # two groups (by cache length), 2 canvases of STEPS passes each


def test_strict_batch_invariance_runs_one_sequence_a_pass(model):
    """No fixed-shape path for this engine: strict gives each sequence passes of its own."""
    engine = build_engine(model, max_batch_size=8, batch_invariance="strict")
    assert engine.max_batch_size == 1
    seqs = [engine.start(request(CANVAS, seed)) for seed in (1, 2)]
    engine.step_sequences(seqs)  # encode each, then one decoder pass each
    assert engine.forward_passes - engine.family.encoder_passes == 2


def refused(engine, prompt_len: int, params: SamplingParams, options: DiffusionOptions | None) -> str | None:
    """The field a refusal names, or None when the family takes the request."""
    try:
        engine.validate(GenerationRequest(list(range(1, prompt_len + 1)), params, options))
    except APIError as err:
        assert err.status == 400
        return err.param
    return None


def test_refusals_name_the_option(model):
    engine = build_engine(model)
    defaults = DiffusionOptions()
    params = SamplingParams(max_tokens=8)
    assert refused(engine, 5, params, defaults) is None
    assert refused(engine, 5, SamplingParams(max_tokens=8, top_p=0.9), defaults) == "top_p"
    assert refused(engine, 5, params, DiffusionOptions(block_length=64)) == "dfast.block_length"
    assert refused(engine, 5, params, DiffusionOptions(cache="dual")) == "dfast.cache"
    odd = DiffusionOptions(ultra_fast_config=UltraFastConfig(min_steps=2))
    assert refused(engine, 5, params, odd) == "dfast.ultra_fast_config.min_steps"
    applies = DiffusionOptions(steps=3, ultra_fast_config=UltraFastConfig(hold_steps=3, first_token_steps=2))
    assert refused(engine, 5, params, applies) is None
    # the context counts whole canvases: 10 + 1010 fits 1024 positions, but not as 127 canvases of 8
    assert refused(engine, 10, SamplingParams(max_tokens=1010), None) == "max_tokens"
    assert refused(engine, 8, SamplingParams(max_tokens=1016), None) is None


def test_options_equal_to_the_models_own_defaults_are_taken(model):
    """A server may set a refused option for the model; a request carrying that same value is fine."""
    served = DiffusionOptions(cache="dual")
    engine = build_engine(model, diffusion_defaults=served)
    assert refused(engine, 5, SamplingParams(max_tokens=8), served) is None
    assert refused(engine, 5, SamplingParams(max_tokens=8), DiffusionOptions()) == "dfast.cache"


def test_steps_option_sets_the_denoising_steps_per_canvas(model):
    seq, _ = run(build_engine(model), request(2 * CANVAS, options=DiffusionOptions(ultra_fast=False, steps=2)))
    assert seq.passes_per_block == [2, 2] and seq.nfe == 4


# ---- ultra-fast policies, on a stub whose logits are forced ------------------------------------------
ULTRA = UltraFastConfig(enable_early_stop=False, hold_steps=2)


def stub_run(tokenizer, logits, options):
    model = StubGemma(tokenizer, logits)
    return run(EngineCore(BlockDiffusion(model)), request(CANVAS, options=options))


def test_early_first_reveal_streams_the_sure_leading_run_after_the_first_pass(tokenizer):
    """Positions 0-2 are certain from the first pass: ultra-fast sends them at pass 1 and freezes them;
    the standard mode sends nothing before the canvas ends."""
    def logits(step, canvases):
        return peaked(CANVAS, [0, 1, 2, 4], 40.0)  # position 3 is uniform: the run stops there

    seq, chunks = stub_run(tokenizer, logits, DiffusionOptions(ultra_fast_config=ULTRA))
    assert chunks[0].nfe == 1 and chunks[0].new_tokens == 3 and chunks[0].new_text == "t7 t7 t7"
    assert seq.detokenizer.token_ids[:3] == [7, 7, 7]
    _, standard = stub_run(tokenizer, logits, STANDARD)
    assert [c.nfe for c in standard if c.new_tokens] == [STEPS]


def test_reveal_waits_for_first_token_steps(tokenizer):
    ultra = UltraFastConfig(enable_early_stop=False, hold_steps=STEPS + 1, first_token_steps=3)
    _, chunks = stub_run(tokenizer, lambda step, c: peaked(CANVAS, [0, 1], 40.0), DiffusionOptions(ultra_fast_config=ultra))
    assert chunks[0].nfe == 3 and chunks[0].new_tokens == 2


def test_a_token_held_for_hold_steps_under_the_bound_is_committed(tokenizer):
    """Position 0 becomes certain at pass 2: accepted with the same token at passes 2 and 3, it is
    committed at pass 3 (hold_steps 2), then position 1 (certain from pass 3) at pass 4."""
    def logits(step, canvases):
        sure = [0] if step == 2 else [0, 1] if step >= 3 else []
        return peaked(CANVAS, sure, 40.0)

    options = DiffusionOptions(ultra_fast_config=UltraFastConfig(enable_early_stop=False, hold_steps=2,
                                                                 enable_instant_first_token=False))
    _, chunks = stub_run(tokenizer, logits, options)
    assert [(c.nfe, c.new_tokens) for c in chunks if c.new_tokens][:2] == [(3, 1), (4, 1)]


def test_early_stop_ends_a_canvas_when_stable_and_sure_before_the_models_own_stop(tokenizer):
    """Every position leads by a gap that keeps its top probability above 0.95 but its entropy above the
    model's 0.005: ultra-fast's early stop ends the canvas at pass 2 (stable since pass 1); the model's
    own stop waits for the colder temperatures of later passes."""
    def logits(step, canvases):
        return peaked(CANVAS, list(range(CANVAS)), 8.0)

    early = DiffusionOptions(ultra_fast_config=UltraFastConfig(enable_instant_first_token=False, hold_steps=STEPS + 1))
    seq, _ = stub_run(tokenizer, logits, early)
    assert seq.passes_per_block == [2]
    standard, _ = stub_run(tokenizer, logits, STANDARD)
    assert standard.passes_per_block[0] > 2
    off = DiffusionOptions(ultra_fast_config=UltraFastConfig(enable_instant_first_token=False, hold_steps=STEPS + 1,
                                                             enable_early_stop=False))
    assert stub_run(tokenizer, logits, off)[0].passes_per_block == standard.passes_per_block


def test_a_failing_sequence_ends_alone_and_its_batch_mate_is_unchanged(model, monkeypatch):
    """A pass that fails for a batch is retried per sequence: the request that causes it ends with the error,
    its mate finishes with the answer it has alone."""
    good, bad = request(CANVAS, seed=1), request(CANVAS, seed=2)
    alone = run(build_engine(model), good)[0].detokenizer.token_ids
    engine = build_engine(model)
    seqs = [engine.start(good), engine.start(bad)]
    real = model.denoise

    def denoise(canvases, cache, starts, *args):
        if any(canvas is seqs[1].canvas[0] or torch.equal(canvas, seqs[1].canvas[0]) for canvas in canvases):
            raise RuntimeError("boom")
        return real(canvases, cache, starts, *args)

    monkeypatch.setattr(model, "denoise", denoise)
    while not seqs[0].finished:
        engine.step_sequences([s for s in seqs if not s.finished])
    assert isinstance(seqs[1].error, RuntimeError) and seqs[1].finished
    assert seqs[0].error is None and seqs[0].detokenizer.token_ids == alone


def test_no_early_commit_before_first_token_steps(tokenizer):
    """A token held since pass 1 would commit at pass 2 (hold_steps 2); first_token_steps 4 holds all text back
    until pass 4, where the whole sure run goes at once."""
    options = DiffusionOptions(ultra_fast_config=UltraFastConfig(enable_early_stop=False, hold_steps=2,
                                                                 enable_instant_first_token=False, first_token_steps=4))
    _, chunks = stub_run(tokenizer, lambda step, c: peaked(CANVAS, [0, 1], 40.0), options)
    assert [(c.nfe, c.new_tokens) for c in chunks if c.new_tokens][0] == (4, 2)
