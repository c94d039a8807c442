"""Block-wise approximate KV cache (prefix / dual) on tiny-mdlm: where it is exact, what it computes."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import build_engine
from tests.engine.helpers import llada_like
from dfast_serve.engine.masked.kv_cache import BlockCache
from dfast_serve.engine import GenerationRequest, SamplingParams
from dfast_serve.models.bidirectional import BidirectionalLM

PROMPTS = ["Recite Genesis 1:1.", "Continue: And God said", "Recite Psalms 23:1."]


def chat(model, text):
    return model.encode_chat([{"role": "user", "content": text}])


def answer_tokens(model, prompt_ids, options, max_tokens=24):
    engine = build_engine(model)
    seq = engine.start(GenerationRequest(prompt_ids, SamplingParams(max_tokens=max_tokens), options))
    while not seq.finished:
        engine.step_sequences([seq])
    return seq.answer.tolist(), "".join(c.new_text for c in seq.pending), seq.nfe


def test_a_fresh_cache_reproduces_the_full_pass(tiny_mdlm):
    """Context cached from this very canvas: the block's logits equal a full pass's (RoPE positions, masks)."""
    net = tiny_mdlm.network
    prompt = chat(tiny_mdlm, PROMPTS[0])
    p, start, end = len(prompt), 8, 16  # the block: answer positions 8..15
    answer = torch.randint(100, 1000, (24,), generator=torch.Generator().manual_seed(0))
    answer[start:] = tiny_mdlm.mask_token_id
    answer[start + 2] = 500  # one token decided inside the block
    canvas = torch.tensor([prompt + answer.tolist()])
    with torch.no_grad():
        full, kv = net(canvas, return_kv=True)
        s, e = p + start, p + end
        prefix = [(k[:, :, :s], v[:, :, :s]) for k, v in kv]
        logits = net(canvas[:, s:], position_ids=torch.arange(s, canvas.shape[1])[None], past_kv=prefix)
        assert torch.allclose(logits, full[:, s:], atol=1e-4)
        outside = [(torch.cat([k[:, :, :s], k[:, :, e:]], 2), torch.cat([v[:, :, :s], v[:, :, e:]], 2)) for k, v in kv]
        logits = net(canvas[:, s:e], position_ids=torch.arange(s, e)[None], past_kv=outside)
        assert torch.allclose(logits, full[:, s:e], atol=1e-4)
        with pytest.raises(ValueError, match="position_ids"):
            net(canvas[:, s:e], past_kv=outside)


@pytest.fixture(scope="module")
def one_layer(tiny_mdlm):
    """tiny-mdlm cut to its first layer: its keys/values depend on each token and position alone."""
    cfg = dataclasses.replace(tiny_mdlm.network.config, num_layers=1)
    net = BidirectionalLM(cfg)
    state = {k: v for k, v in tiny_mdlm.network.state_dict().items() if not k.startswith("layers.") or k.startswith("layers.0.")}
    net.load_state_dict(state)
    return dataclasses.replace(tiny_mdlm, network=net.eval())


@pytest.mark.parametrize("decoding", ["schedule", "threshold"])
@pytest.mark.parametrize("ultra_fast", [False, True])
def test_cache_is_exact_for_a_one_layer_model(one_layer, decoding, ultra_fast):
    for prompt in PROMPTS:
        ids = chat(one_layer, prompt)
        runs = {cache: answer_tokens(one_layer, ids, DiffusionOptions(ultra_fast=ultra_fast, decoding=decoding, threshold=0.5,
                                                                     block_length=8, cache=cache))
                for cache in ("none", "prefix", "dual")}
        assert runs["prefix"] == runs["none"] and runs["dual"] == runs["none"]


def recorded_passes(model):
    """A copy of ``model`` whose network records (query length, cached context length) of every pass."""
    network = copy.deepcopy(model.network)
    seen = []
    forward = network.forward

    def spy(input_ids, attention_mask=None, position_ids=None, past_kv=None, return_kv=False):
        seen.append((input_ids.shape[1], 0 if past_kv is None else past_kv[0][0].shape[2]))
        return forward(input_ids, attention_mask, position_ids, past_kv, return_kv)

    network.forward = spy
    return dataclasses.replace(model, network=network), seen


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_full_pass_per_block_then_only_the_block(tiny_mdlm, cache):
    model, seen = recorded_passes(tiny_mdlm)
    ids = chat(model, PROMPTS[0])
    engine = build_engine(model)
    options = DiffusionOptions(ultra_fast=False, block_length=8, steps=12, cache=cache)  # 3 blocks, 4 steps each
    seq = engine.start(GenerationRequest(ids, SamplingParams(max_tokens=24), options))
    while not seq.finished:
        engine.step_sequences([seq])
    canvas, p = len(ids) + 24, len(ids)
    assert seq.nfe == len(seen) > seq.block_index + 1
    assert seen[0] == (canvas, 0) and [s for s in seen if s[1] == 0] == [(canvas, 0)] * (seq.block_index + 1)
    for query, context in seen:
        if context == 0:
            continue
        if cache == "dual":
            assert (query, context) == (8, canvas - 8)  # the block alone; prefix and suffix cached
        else:
            assert query + context == canvas and (context - p) % 8 == 0  # block + suffix; prefix cached


def test_stale_cache_is_rebuilt():
    kv = [(torch.zeros(2, 10, 4), torch.zeros(2, 10, 4))]
    dual, prefix = BlockCache(dual=True), BlockCache(dual=False)
    for cache in (dual, prefix):
        assert cache.plan(3, 10, (2, 4), (0, 0)).refresh  # nothing cached yet
        cache.store(kv, 3, (2, 4), (0, 0))
        assert not cache.plan(3, 10, (2, 4), (0, 0)).refresh
        assert cache.plan(3, 10, (4, 6), (1, 0)).refresh  # the next block
    # a token decided after the block (ultra-fast reveal, early stop) stales the dual cache's suffix only
    assert dual.plan(3, 10, (2, 4), (0, 1)).refresh and not prefix.plan(3, 10, (2, 4), (0, 1)).refresh
    plan = dual.plan(3, 10, (2, 4), (0, 0))
    assert (plan.start, plan.end, plan.context[0][0].shape[1]) == (5, 7, 8)  # block only; 10 - 2 cached
    plan = prefix.plan(3, 10, (2, 4), (0, 1))
    assert (plan.start, plan.end, plan.context[0][0].shape[1]) == (5, 10, 5)  # block + suffix; prefix cached


def test_models_without_cache_support_ignore_the_option(tiny_mdlm):
    remote_like = llada_like(tiny_mdlm)
    assert not remote_like.kv_cache
    ids = chat(tiny_mdlm, PROMPTS[0])
    plain = answer_tokens(remote_like, ids, DiffusionOptions(ultra_fast=False, block_length=8))
    assert answer_tokens(remote_like, ids, DiffusionOptions(ultra_fast=False, block_length=8, cache="dual")) == plain
    with pytest.raises(NotImplementedError):
        remote_like.logits_and_kv(torch.tensor([ids]), torch.arange(len(ids))[None])
