"""Batched steps: a request's greedy output does not depend on who shares its forward passes.

Logits are not bit-identical between a sequence alone and the same sequence left-padded in a
batch (float32 on CPU differs by ~1e-5, see ``engine/batching.py``); greedy tokens are what must
not change, and what these tests compare, with sequences of different prompt lengths joining the
running batch at different steps.
"""

from __future__ import annotations

import pytest

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import build_engine
from dfast_serve.engine import GenerationRequest, SamplingParams
from tests.engine.helpers import llada_like, run_alone, run_joined

PROMPTS = ["Recite Genesis 1:1.", "Continue: And God said unto Moses, I AM THAT I AM", "Why?",
           "Recite Psalms 23:1, then the verse after it."]
JOIN_AT = [0, 0, 2, 5]  # the step before which each request starts


def chat_requests(model, options, max_tokens):
    return [GenerationRequest(model.encode_chat([{"role": "user", "content": p}]), SamplingParams(max_tokens=max_tokens), options)
            for p in PROMPTS]


@pytest.mark.parametrize("options", [
    DiffusionOptions(ultra_fast=False),
    DiffusionOptions(),
    DiffusionOptions(decoding="threshold", threshold=0.5, cache="prefix", block_length=8),
    DiffusionOptions(ultra_fast=False, cache="dual", block_length=8),
], ids=["standard", "ultra", "threshold-prefix", "dual"])
def test_diffusion_output_does_not_depend_on_the_batch(tiny_mdlm, options):
    requests = chat_requests(tiny_mdlm, options, max_tokens=24)
    assert len({len(r.prompt_ids) for r in requests}) == len(requests)
    engine = build_engine(tiny_mdlm)
    alone = run_alone(engine, requests)
    passes = engine.forward_passes
    assert run_joined(engine, requests, JOIN_AT) == alone
    assert engine.forward_passes - passes < sum(nfe for _, _, nfe, _ in alone)  # passes were shared


def test_batch_size_bound_and_equal_length_grouping(tiny_mdlm):
    same, other = tiny_mdlm.encode_chat([{"role": "user", "content": "Recite Genesis 1:1."}]), [5, 6, 7]
    requests = [GenerationRequest(ids, SamplingParams(max_tokens=8), DiffusionOptions(ultra_fast=False))
                for ids in (same, same, other)]
    padded = build_engine(tiny_mdlm, max_batch_size=2)
    padded.step_sequences([padded.start(r) for r in requests])
    assert padded.forward_passes == 2  # 2 + 1
    remote_like = llada_like(tiny_mdlm)  # ignores attention masks: no padding
    assert not remote_like.padded_batches
    grouped = build_engine(remote_like, max_batch_size=8)
    assert run_joined(grouped, requests, [0, 0, 0]) == run_alone(build_engine(remote_like), requests)
    grouped.forward_passes = 0
    grouped.step_sequences([grouped.start(r) for r in requests])
    assert grouped.forward_passes == 2  # the two equal-length canvases together, the other alone
    with pytest.raises(ValueError):
        build_engine(tiny_mdlm, max_batch_size=0)


@pytest.fixture(scope="module")
def smollm2_fp32():
    """float32: in bf16 a padded row's logits move by up to ~0.6 and greedy tokens do flip."""
    from dfast_serve.models.embedded import load_smollm2

    return load_smollm2(dtype="float32")


def test_ar_output_does_not_depend_on_the_batch(smollm2_fp32):
    requests = chat_requests(smollm2_fp32, None, max_tokens=12)
    engine = build_engine(smollm2_fp32, max_batch_size=3)
    alone = run_alone(engine, requests)
    passes = engine.forward_passes
    assert run_joined(engine, requests, JOIN_AT) == alone
    shared = engine.forward_passes - passes
    assert shared < sum(nfe for _, _, nfe, _ in alone)
    assert all(text for _, text, _, _ in alone)
