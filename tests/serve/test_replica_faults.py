"""Faults a replica meets, with the replica class in-process (no Ray): a chat template or tokenizer that
rejects a request's input is the client's error (a 400 naming the field, never a 500, with no
exception text for the client); an engine whose every pass fails turns the replica unhealthy, while
one failing request does not."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import SamplingParams
from dfast_serve.serve.replicas import UNHEALTHY_AFTER_FAILED_PASSES, ModelReplica
from dfast_serve.wire import APIError, ReplicaRequest

SECRET = "template internals: raise_exception('Conversation roles must alternate user/assistant')"


@pytest.fixture(scope="module")
def replica() -> ModelReplica:
    return ModelReplica.func_or_class({"name": "tiny-mdlm", "engine": "diffusion"}, DiffusionOptions(), {})


def test_a_template_that_raises_is_a_400_naming_messages_without_its_text(replica, monkeypatch, caplog):
    def rejecting_template(messages, add_generation_prompt=True):
        raise ValueError(SECRET)  # what a Jinja template's raise_exception does (Gemma's on bad roles)

    monkeypatch.setattr(replica.model, "encode_chat", rejecting_template)
    request = ReplicaRequest("r1", SamplingParams(max_tokens=4), messages=[{"role": "assistant", "content": "hi"}],
                             diffusion=DiffusionOptions())

    async def drain() -> list:
        return [item async for item in replica.generate(request)]

    with caplog.at_level(logging.WARNING):
        (refused,) = asyncio.run(drain())
        tokenized = replica.tokenize(None, [{"role": "assistant", "content": "hi"}])
    for error in (refused, tokenized):
        assert isinstance(error, APIError) and (error.status, error.param) == (400, "messages")
        assert SECRET not in error.message and "ValueError" not in error.message
    assert all(record.exc_info is None for record in caplog.records)  # logged in one line, no traceback


def _generate(replica: ModelReplica, prompt: str) -> list:
    request = ReplicaRequest(f"r-{prompt}", SamplingParams(max_tokens=4), prompt=prompt, diffusion=DiffusionOptions())

    async def drain() -> list:
        return [item async for item in replica.generate(request)]

    return asyncio.run(drain())


def test_an_engine_whose_every_pass_fails_fails_the_health_check_and_recovers_when_passes_run(monkeypatch):
    replica = ModelReplica.func_or_class({"name": "tiny-mdlm", "engine": "diffusion"}, DiffusionOptions(), {})
    forward = replica.engine.family.forward

    def broken(pass_):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")  # sticky: every pass fails

    monkeypatch.setattr(replica.engine.family, "forward", broken)
    for i in range(UNHEALTHY_AFTER_FAILED_PASSES - 1):
        assert isinstance(_generate(replica, f"In the beginning {i}")[-1], APIError)
        replica.check_health()  # not yet: a few failed requests are their own business
    assert isinstance(_generate(replica, "And God said")[-1], APIError)
    with pytest.raises(RuntimeError, match="forward passes .* all failed"):
        replica.check_health()
    monkeypatch.setattr(replica.engine.family, "forward", forward)
    assert _generate(replica, "Let there be light")[-1].is_final  # a pass that runs resets the count
    replica.check_health()
