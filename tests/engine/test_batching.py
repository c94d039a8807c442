"""Batched steps: a request's greedy output does not depend on who shares its forward passes.

Logits are not bit-identical between a sequence alone and the same sequence left-padded in a
batch (float32 on CPU differs by ~1e-5, see ``engine/batching.py``); greedy tokens are what must
not change, and what these tests compare, with sequences of different prompt lengths joining the
running batch at different steps.
"""

from __future__ import annotations

import pytest

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine.ar import AREngine
from dfast_serve.engine.diffusion import DiffusionEngine
from dfast_serve.engine.types import GenerationRequest, SamplingParams
from dfast_serve.models.adapters import wrap_llada

PROMPTS = ["Recite Genesis 1:1.", "Continue: And God said unto Moses, I AM THAT I AM", "Why?",
           "Recite Psalms 23:1, then the verse after it."]
JOIN_AT = [0, 0, 2, 5]  # the step before which each request starts


def outcome(seq):
    tokens = seq.answer.tolist() if hasattr(seq, "answer") else None
    return tokens, "".join(c.new_text for c in seq.pending), seq.nfe, seq.finish_reason


def run_alone(engine, requests):
    results = []
    for request in requests:
        seq = engine.start(request)
        while not seq.finished:
            engine.step([seq])
        results.append(outcome(seq))
    return results


def run_joined(engine, requests, join_at=JOIN_AT):
    """All requests in one running list; request i joins before step ``join_at[i]``."""
    started, step = [], 0
    while len(started) < len(requests) or any(not s.finished for s in started):
        started += [engine.start(r) for r, at in zip(requests, join_at) if at == step]
        running = [s for s in started if not s.finished]
        if running:
            engine.step(running)
        step += 1
    return [outcome(s) for s in started]


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
    engine = DiffusionEngine(tiny_mdlm)
    alone = run_alone(engine, requests)
    passes = engine.forward_passes
    assert run_joined(engine, requests) == alone
    assert engine.forward_passes - passes < sum(nfe for _, _, nfe, _ in alone)  # passes were shared


def test_batch_size_bound_and_equal_length_grouping(tiny_mdlm):
    same, other = tiny_mdlm.encode_chat([{"role": "user", "content": "Recite Genesis 1:1."}]), [5, 6, 7]
    requests = [GenerationRequest(ids, SamplingParams(max_tokens=8), DiffusionOptions(ultra_fast=False))
                for ids in (same, same, other)]
    padded = DiffusionEngine(tiny_mdlm, max_batch_size=2)
    padded.step([padded.start(r) for r in requests])
    assert padded.forward_passes == 2  # 2 + 1
    llada_like = wrap_llada(tiny_mdlm.network, tiny_mdlm.tokenizer)  # ignores attention masks: no padding
    assert not llada_like.padded_batches
    grouped = DiffusionEngine(llada_like, max_batch_size=8)
    assert run_joined(grouped, requests, [0, 0, 0]) == run_alone(DiffusionEngine(llada_like), requests)
    grouped.forward_passes = 0
    grouped.step([grouped.start(r) for r in requests])
    assert grouped.forward_passes == 2  # the two equal-length canvases together, the other alone
    with pytest.raises(ValueError):
        DiffusionEngine(tiny_mdlm, max_batch_size=0)


@pytest.fixture(scope="module")
def smollm2_fp32():
    """float32: in bf16 a padded row's logits move by up to ~0.6 and greedy tokens do flip."""
    from dfast_serve.models.embedded import load_smollm2

    return load_smollm2(dtype="float32")


def test_ar_output_does_not_depend_on_the_batch(smollm2_fp32):
    requests = chat_requests(smollm2_fp32, None, max_tokens=12)
    engine = AREngine(smollm2_fp32, max_batch_size=3)
    alone = run_alone(engine, requests)
    passes = engine.forward_passes
    assert run_joined(engine, requests) == alone
    shared = engine.forward_passes - passes
    assert shared < sum(nfe for _, _, nfe, _ in alone)
    assert all(text for _, text, _, _ in alone)
