"""Confidence-threshold parallel decoding (Fast-dLLM) and the confidence measures."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from dfast_serve.config import DiffusionOptions, UltraFastConfig, resolve_diffusion_options
from dfast_serve.engine.masked.confidence import confidence_of
from dfast_serve.engine import build_engine
from dfast_serve.engine import GenerationRequest, SamplingParams
from dfast_serve.models.adapters import DiffusionLM
from tests.engine.helpers import check_chunk_invariants

VOCAB, MASK, EOS = 20, 19, 2
PROMPTS = ["Recite Genesis 1:1.", "Continue: And God said", "Recite Psalms 23:1.", "Recite John 3:16."]


class IdTokenizer:
    eos_token_id = EOS

    def decode(self, ids, **_):
        return "".join(f"t{i} " for i in ids)


class FixedConfidence(nn.Module):
    """Answer position i proposes token 3 + i with probability ``probs[i][0]`` (and token 10 + i with
    ``probs[i][1]``, when given), whatever the canvas holds; the rest is spread evenly."""

    def __init__(self, prompt_len: int, probs: list[tuple[float, ...]]) -> None:
        super().__init__()
        self.prompt_len, self.probs = prompt_len, probs
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, s = input_ids.shape
        logits = torch.zeros(b, s, VOCAB)
        for i, chosen in enumerate(self.probs):
            rest = VOCAB - 1 - len(chosen)  # the mask is ruled out by the engine
            for token, p in zip((3 + i, 10 + i), chosen):
                logits[:, self.prompt_len + i, token] = math.log(p * rest / (1 - sum(chosen)))
        return logits


def fixed_model(prompt_len: int, probs: list[tuple[float, ...]]) -> DiffusionLM:
    return DiffusionLM(tokenizer=IdTokenizer(), network=FixedConfidence(prompt_len, probs),
                       mask_token_id=MASK, eos_token_ids=frozenset({EOS}))


def decided_per_step(model: DiffusionLM, prompt: list[int], options: DiffusionOptions, max_tokens: int) -> list[list[int]]:
    engine = build_engine(model)
    seq = engine.start(GenerationRequest(prompt, SamplingParams(max_tokens=max_tokens), options))
    steps, before = [], seq.decided.clone()
    while not seq.finished:
        engine.step_sequences([seq])
        steps.append((seq.decided & ~before).nonzero()[:, 0].tolist())
        before = seq.decided.clone()
    return steps


PROBS = [(0.95,), (0.5,), (0.97,), (0.3,), (0.92,), (0.6,)]


class Certain(nn.Module):
    """Answer position i proposes token 3 + i with probability exactly 1.0 in float32."""

    def __init__(self, prompt_len: int, length: int) -> None:
        super().__init__()
        self.prompt_len, self.length = prompt_len, length
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*input_ids.shape, VOCAB)
        for i in range(self.length):
            logits[:, self.prompt_len + i, 3 + i] = 200.0
        return logits


def test_threshold_one_commits_every_certain_token_in_one_pass():
    """A threshold is reached, not only exceeded: on a model that is sure of every token, threshold
    1.0 decides the whole block in one pass (the one-token fallback would take eight)."""
    prompt = [5, 6]
    model = DiffusionLM(tokenizer=IdTokenizer(), network=Certain(len(prompt), 8), mask_token_id=MASK,
                        eos_token_ids=frozenset({EOS}))
    options = DiffusionOptions(ultra_fast=False, decoding="threshold", threshold=1.0, block_length=8)
    assert decided_per_step(model, prompt, options, 8) == [[0, 1, 2, 3, 4, 5, 6, 7]]
    chunks = list(build_engine(model).generate(GenerationRequest(prompt, SamplingParams(max_tokens=8), options)))
    assert [(c.new_text, c.nfe, c.total_tokens, c.finish_reason) for c in chunks] == [
        ("t3 t4 t5 t6 t7 t8 t9 t10 ", 1, 8, "length")]


def test_threshold_commits_every_confident_token_then_the_most_confident_one():
    prompt = [5, 6]
    options = DiffusionOptions(ultra_fast=False, decoding="threshold", threshold=0.9, block_length=6)
    assert decided_per_step(fixed_model(len(prompt), PROBS), prompt, options, 6) == [[0, 2, 4], [5], [1], [3]]


def test_threshold_decoding_stays_within_its_block_and_its_step_budget():
    prompt = [5, 6]
    model = fixed_model(len(prompt), PROBS)
    blocks = DiffusionOptions(ultra_fast=False, decoding="threshold", threshold=0.9, block_length=3)
    assert decided_per_step(model, prompt, blocks, 6) == [[0, 2], [1], [4], [5], [3]]
    # two steps for one block: the second (last budgeted) step commits whatever is left
    budget = DiffusionOptions(ultra_fast=False, decoding="threshold", threshold=0.9, block_length=6, steps=2)
    assert decided_per_step(model, prompt, budget, 6) == [[0, 2, 4], [1, 3, 5]]


def test_confidence_measures():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25]])
    proposed = torch.tensor([0.7, 0.25])
    assert torch.equal(confidence_of(probs, proposed, "probability"), proposed)
    assert torch.allclose(confidence_of(probs, proposed, "margin"), torch.tensor([0.5, 0.0]))
    entropy = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert torch.allclose(confidence_of(probs, proposed, "entropy"), torch.tensor([math.exp(-entropy), 0.25]))
    assert (confidence_of(probs, proposed, "entropy") <= probs.max(-1).values + 1e-6).all()


def test_margin_ranks_and_thresholds_differently_from_probability():
    prompt = [5, 6]
    # (top-1, top-2): probabilities rank 2 > 0 > 1, margins (0.25, 0.53, 0.45) rank 1 > 2 > 0
    model = fixed_model(len(prompt), [(0.6, 0.35), (0.55,), (0.7, 0.25)])
    by = lambda **kw: decided_per_step(model, prompt, DiffusionOptions(ultra_fast=False, block_length=3, **kw), 3)  # noqa: E731
    assert by() == [[2], [0], [1]]
    assert by(confidence="margin") == [[1], [2], [0]]
    assert by(decoding="threshold", threshold=0.5) == [[0, 1, 2]]
    assert by(decoding="threshold", threshold=0.5, confidence="margin") == [[1], [2], [0]]


def run(model, prompt, options, max_tokens=32):
    ids = model.encode_chat([{"role": "user", "content": prompt}])
    return list(build_engine(model).generate(GenerationRequest(ids, SamplingParams(max_tokens=max_tokens), options)))


def test_threshold_one_is_the_standard_one_token_schedule(tiny_mdlm):
    # no token of the tiny model is ever certain: only the "at least the most confident one" rule commits
    for prompt in PROMPTS[:2]:
        standard = run(tiny_mdlm, prompt, DiffusionOptions(ultra_fast=False))
        strict = run(tiny_mdlm, prompt, DiffusionOptions(ultra_fast=False, decoding="threshold", threshold=1.0))
        assert [c.new_text for c in strict] == [c.new_text for c in standard]
        assert [c.nfe for c in strict] == [c.nfe for c in standard]


def test_lower_threshold_means_more_tokens_per_forward_pass(tiny_mdlm):
    """Per prompt, a lower threshold never takes more passes, and the one-token schedule (the
    standard path: 32 passes for 32 tokens, fewer only when EOS streams first) is the most."""
    passes = {}
    for threshold in (0.3, 0.9):
        options = DiffusionOptions(ultra_fast=False, decoding="threshold", threshold=threshold)
        passes[threshold] = [run(tiny_mdlm, p, options)[-1].nfe for p in PROMPTS]
    passes["standard"] = [run(tiny_mdlm, p, DiffusionOptions(ultra_fast=False))[-1].nfe for p in PROMPTS]
    for low, high, standard in zip(passes[0.3], passes[0.9], passes["standard"]):
        assert low <= high <= standard
    assert sum(passes[0.3]) < sum(passes[0.9]) < sum(passes["standard"])


def test_threshold_under_ultra_fast_keeps_the_instant_first_token(tiny_mdlm):
    options = DiffusionOptions(decoding="threshold", threshold=0.5,
                               ultra_fast_config=UltraFastConfig(enable_early_stop=False))
    for prompt in PROMPTS[:2]:
        chunks = run(tiny_mdlm, prompt, options, max_tokens=48)
        check_chunk_invariants(chunks)
        assert chunks[0].nfe == 1 and chunks[0].new_text


@pytest.mark.parametrize("bad,field", [
    ({"decoding": "greedy"}, "decoding"),
    ({"threshold": 1.5}, "threshold"),
    ({"confidence": "logit"}, "confidence"),
    ({"cache": "full"}, "cache"),
    ({"decoding": "threshold", "remasking": "random"}, "remasking"),
])
def test_invalid_decoding_options_are_refused(bad, field):
    with pytest.raises(ValidationError) as err:
        resolve_diffusion_options(request=bad, environ={})
    assert field in str(err.value)
