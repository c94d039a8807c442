"""Greedy generation through the engine on the native LLaDA / Dream checkpoints: equal to a plain
reference sampler, unchanged by batch mates of other lengths, and exact under the block KV cache
where the cache promises exactness (a one-layer model; the first pass of a block is a full pass)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import build_engine
from dfast_serve.engine import GenerationRequest, SamplingParams
from dfast_serve.models.adapters import DiffusionLM
from tests.engine.helpers import check_chunk_invariants
from tests.models.checkpoints import FAMILIES

GEN_LEN, BLOCK = 24, 8
PROMPTS = [" ".join(f"t{10 + (7 * i + j) % 480}" for j in range(n)) for i, n in enumerate((5, 17, 9, 30))]


def reference(model: DiffusionLM, prompt_ids: list[int], gen_len: int, block_length: int) -> list[int]:
    """LLaDA's semi-autoregressive low-confidence remasking, greedy, one token per step, the mask
    token never proposed; for Dream (shifted logits) position i is scored by the output at i - 1,
    as Dream's generation code realigns them (``cat([logits[:, :1], logits[:, :-1]])``)."""
    x = torch.tensor([prompt_ids + [model.mask_token_id] * gen_len])
    p = len(prompt_ids)
    for block_start in range(p, p + gen_len, block_length):
        block_end = min(block_start + block_length, p + gen_len)
        for _ in range(block_end - block_start):
            with torch.no_grad():
                logits = model.network(x)
            if model.shift_logits:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            logits[..., model.mask_token_id] = -math.inf
            predicted = logits.argmax(-1)
            probability = logits.softmax(-1).gather(-1, predicted[..., None])[..., 0]
            confidence = torch.full_like(probability, -math.inf)
            in_block = slice(block_start, block_end)
            confidence[:, in_block] = torch.where(x[:, in_block] == model.mask_token_id, probability[:, in_block],
                                                  torch.tensor(-math.inf))
            pick = int(confidence[0].argmax())
            x[0, pick] = predicted[0, pick]
    return x[0, p:].tolist()


def options(**kw) -> DiffusionOptions:
    return DiffusionOptions(ultra_fast=False, steps=GEN_LEN, block_length=BLOCK, **kw)


def run_together(model: DiffusionLM, prompts: list[list[int]], opts: DiffusionOptions) -> list[list[int]]:
    """All requests stepped together (one padded forward pass per step); each answer up to its end."""
    engine = build_engine(model, max_batch_size=8)
    seqs = [engine.start(GenerationRequest(ids, SamplingParams(max_tokens=GEN_LEN), opts)) for ids in prompts]
    while live := [s for s in seqs if not s.finished]:
        engine.step_sequences(live)
    return [s.answer[: s.cursor].tolist() for s in seqs]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_the_reference_sampler(native, family):
    model = native[family]
    engine = build_engine(model)
    compared = 0
    for prompt in PROMPTS[:3]:
        ids = model.encode_prompt(prompt)
        ref = reference(model, ids, GEN_LEN, BLOCK)
        chunks = list(engine.generate(GenerationRequest(ids, SamplingParams(max_tokens=GEN_LEN), options())))
        check_chunk_invariants(chunks)
        end = next((i for i, t in enumerate(ref) if t in model.eos_token_ids), GEN_LEN)
        assert chunks[-1].total_tokens == end
        assert "".join(c.new_text for c in chunks) == model.tokenizer.decode(ref[:end])
        compared += end
    assert compared >= 20  # the random weights do not end every answer at once


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_with_other_lengths_equals_alone(native, family, cache):
    model = native[family]
    prompts = [model.encode_prompt(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)
    for decoding in ("schedule", "threshold"):
        opts = options(cache=cache, decoding=decoding, threshold=0.5)
        alone = [run_together(model, [ids], opts)[0] for ids in prompts]
        assert run_together(model, prompts, opts) == alone
        assert sum(map(len, alone)) >= 20


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_is_exact_for_a_one_layer_model(one_layer, family):
    """A one-layer model's cached keys/values are those a full pass would compute, so a cached
    run equals the uncached one token for token (for Dream: only because the slice starts one
    position before the block, which scores the block's first token)."""
    model = one_layer[family]
    prompts = [model.encode_prompt(p) for p in PROMPTS]
    for decoding in ("schedule", "threshold"):
        runs = {cache: run_together(model, prompts, options(cache=cache, decoding=decoding, threshold=0.5))
                for cache in ("none", "prefix", "dual")}
        assert runs["prefix"] == runs["none"] and runs["dual"] == runs["none"]
        assert sum(map(len, runs["none"])) >= 20


class WidthRecorder(torch.nn.Module):
    """A network wrapper recording the input width of every forward pass."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.widths = network, []

    def forward(self, input_ids: torch.Tensor, **kwargs):
        self.widths.append(input_ids.shape[1])
        return self.network(input_ids, **kwargs)


def test_a_step_runs_cache_refreshes_apart_from_cached_slices(native):
    """A sequence that needs a full pass (a new block's cache) does not pad the cached slices of its
    batch mates to the whole canvas: the step runs one full pass and one pass over the slices."""
    model = native["llada"]
    recorder = WidthRecorder(model.network)
    engine = build_engine(dataclasses.replace(model, network=recorder), max_batch_size=8)
    opts = options(cache="dual")
    ids = [model.encode_prompt(p) for p in PROMPTS[:3]]
    early = [engine.start(GenerationRequest(i, SamplingParams(max_tokens=GEN_LEN), opts)) for i in ids[:2]]
    engine.step_sequences(early)  # both build their cache: one full pass
    late = engine.start(GenerationRequest(ids[2], SamplingParams(max_tokens=GEN_LEN), opts))
    recorder.widths.clear()
    engine.step_sequences(early + [late])
    assert sorted(recorder.widths) == [BLOCK, len(ids[2]) + GEN_LEN]  # the slices (a block each), the new canvas
