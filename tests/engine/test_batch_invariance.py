"""Strict batch invariance in bf16: a request's output, and every logit it sees, is the same alone and
batched with mates of other lengths. Default batching is not so in bf16 (the guard test below shows
its logits move), so the strict tests have something to catch: with strict a no-op they fail."""

from __future__ import annotations

import pytest
import torch

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import EngineCore, MaskedDiffusion, build_engine
from dfast_serve.engine.ar.shape import ArShape
from dfast_serve.engine.batching import bucket
from dfast_serve.engine.masked.fixed_shape import PassShape
from dfast_serve.engine.masked.kv_cache import ForwardPlan
from dfast_serve.engine import GenerationRequest, SamplingParams
from tests.engine.helpers import llada_like, run_alone, run_joined

PROMPTS = ["Recite Genesis 1:1.", "Continue: And God said unto Moses, I AM THAT I AM", "Why?",
           "Recite Psalms 23:1, then the verse after it."]  # chat prompts of 17, 25, 7 and 24 tokens
JOIN_AT = [0, 0, 1, 3]  # the step before which each request starts (in order: outcomes keep it)
OPTIONS = {
    "ultra": DiffusionOptions(),
    "dual-cache": DiffusionOptions(ultra_fast=False, cache="dual", block_length=8),
}


class Recording(MaskedDiffusion):
    """Keeps every logits row each request's passes gave it, by request id."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, list[torch.Tensor]] = {}

    def advance(self, seq, row, output, pass_) -> None:
        logits, _ = output
        self.seen.setdefault(seq.request.request_id, []).append(logits[row, logits.shape[1] - pass_.plan(row).tokens :].clone())
        super().advance(seq, row, output, pass_)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """bf16 on 2 threads of a shared 2-core machine runs several times slower than on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bf16():
    from dfast_serve.models.embedded import load_tiny_mdlm

    return load_tiny_mdlm(dtype="bfloat16")


def requests_for(model, options, max_tokens=12):
    return [GenerationRequest(model.encode_chat([{"role": "user", "content": p}]), SamplingParams(max_tokens=max_tokens),
                              options, request_id=f"r{i}") for i, p in enumerate(PROMPTS)]


def alone_and_batched(model, options, mode):
    requests = requests_for(model, options)
    recording = Recording(model, max_batch_size=3, batch_invariance=mode)
    engine = EngineCore(recording)
    alone = run_alone(engine, requests)
    alone_logits, recording.seen = recording.seen, {}
    passes = engine.forward_passes
    batched = run_joined(engine, requests, JOIN_AT)
    return alone, batched, alone_logits, recording.seen, engine.forward_passes - passes


def same_logits(a: dict[str, list[torch.Tensor]], b: dict[str, list[torch.Tensor]]) -> bool:
    return a.keys() == b.keys() and all(len(a[k]) == len(b[k]) and all(torch.equal(x, y) for x, y in zip(a[k], b[k]))
                                        for k in a)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_strict_output_and_logits_do_not_depend_on_the_batch(tiny_bf16, options):
    alone, batched, alone_logits, batched_logits, shared_passes = alone_and_batched(tiny_bf16, options, "strict")
    assert batched == alone
    assert same_logits(alone_logits, batched_logits)  # bit for bit, every pass
    assert shared_passes < sum(nfe for _, _, nfe, _ in alone)  # and it still batches


def test_default_batching_moves_bf16_logits(tiny_bf16):
    """The guard: without strict, the same runs see different logits, so the test above is not vacuous."""
    _, _, alone_logits, batched_logits, _ = alone_and_batched(tiny_bf16, OPTIONS["ultra"], "off")
    assert not same_logits(alone_logits, batched_logits)


def test_strict_passes_have_one_shape_per_bucket():
    assert [bucket(n) for n in (0, 1, 16, 17, 33, 128, 129, 300)] == [0, 16, 16, 32, 64, 128, 256, 384]
    plan = ForwardPlan(0, 40)
    assert PassShape.of(plan, 8, None) == PassShape(64, 0, 8)
    assert PassShape.of(plan, 8, 256) == PassShape(64, 0, 4)  # a bucket's rows fit the step's token budget
    assert PassShape.of(ForwardPlan(0, 300), 8, 256) == PassShape(384, 0, 1)


def test_strict_without_padded_batches_runs_one_sequence_a_pass(tiny_bf16):

    remote_like = llada_like(tiny_bf16)  # ignores attention masks: cannot pad
    engine = build_engine(remote_like, max_batch_size=8, batch_invariance="strict")
    same = requests_for(tiny_bf16, OPTIONS["ultra"])[0]
    engine.step_sequences([engine.start(same), engine.start(same)])
    assert engine.forward_passes == 2  # equal shapes, yet apart: batch size is part of the shape


def ar_alone_and_batched(model, mode, monkeypatch):
    """SmolLM2 in bf16: each request alone, then joined at different steps; the logits every step gave each."""
    from dfast_serve.engine.ar import family as ar

    seen: dict[str, list[torch.Tensor]] = {}
    advance = ar.ARSequence.advance

    def recording(seq, logits):
        seen.setdefault(seq.request.request_id, []).append(logits.clone())
        advance(seq, logits)

    monkeypatch.setattr(ar.ARSequence, "advance", recording)
    requests = [GenerationRequest(model.encode_chat([{"role": "user", "content": p}]),
                                  SamplingParams(max_tokens=6, ignore_eos=True), request_id=f"r{i}")
                for i, p in enumerate(PROMPTS)]
    engine = build_engine(model, max_batch_size=3, batch_invariance=mode)
    alone = run_alone(engine, requests)
    alone_logits = dict(seen)
    seen.clear()
    passes = engine.forward_passes
    batched = run_joined(engine, requests, JOIN_AT)
    return alone, batched, alone_logits, dict(seen), engine.forward_passes - passes


def test_strict_ar_output_and_logits_do_not_depend_on_the_batch(smollm2, monkeypatch):
    alone, batched, alone_logits, batched_logits, shared_passes = ar_alone_and_batched(smollm2, "strict", monkeypatch)
    assert batched == alone
    assert same_logits(alone_logits, batched_logits)
    assert shared_passes < sum(nfe for _, _, nfe, _ in alone)


def test_default_ar_batching_moves_bf16_logits(smollm2, monkeypatch):
    _, _, alone_logits, batched_logits, _ = ar_alone_and_batched(smollm2, "off", monkeypatch)
    assert not same_logits(alone_logits, batched_logits)


def test_ar_shapes_always_keep_a_padding_column():
    """transformers drops an all-ones mask (and switches attention path): every strict row pads at least once."""
    assert ArShape.of(0, 15, 8) == ArShape(16, 0, 8) and ArShape.of(0, 16, 8) == ArShape(32, 0, 8)
    assert ArShape.of(30, 1, 8) == ArShape(1, 31, 8) and ArShape.of(31, 1, 8) == ArShape(1, 63, 8)
