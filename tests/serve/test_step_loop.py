"""The replica's step loop without Ray: requests join and leave a running batch between steps,
and a request's greedy output does not depend on who it shared forward passes with."""

from __future__ import annotations

import asyncio
import sys

import pytest

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import GenerationRequest, SamplingParams, build_engine
from dfast_serve.serve.step_loop import StepLoop

STANDARD = DiffusionOptions(ultra_fast=False, block_length=8)


def request(model, prompt: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(model.encode_prompt(prompt), SamplingParams(max_tokens=max_tokens), diffusion=STANDARD)


async def collect(subscription, after_first=None) -> str:
    text = ""
    async for chunk in subscription.chunks():
        if after_first is not None and chunk.is_first:
            after_first()
        text += chunk.new_text
    return text


def alone(model, req: GenerationRequest) -> str:
    return "".join(c.new_text for c in build_engine(model, max_batch_size=1).generate(req))


async def until(condition, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` on the event loop until it holds; fail after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_a_request_joining_mid_generation_shares_steps_and_changes_no_output(tiny_mdlm):
    long_req = request(tiny_mdlm, "In the beginning God created", 32)
    short_req = request(tiny_mdlm, "And the earth was", 16)
    engine = build_engine(tiny_mdlm, max_batch_size=8)
    loop = StepLoop(engine)

    async def run() -> tuple[str, str]:
        first = loop.submit(long_req)
        joined: dict[str, asyncio.Task] = {}
        long_text = await collect(first, after_first=lambda: joined.setdefault(
            "task", asyncio.ensure_future(collect(loop.submit(short_req)))))
        return long_text, await joined["task"]

    long_text, short_text = asyncio.run(run())
    assert long_text == alone(tiny_mdlm, long_req)
    assert short_text == alone(tiny_mdlm, short_req)
    # Each step ran both sequences in one pass while both were active: one pass per step.
    assert engine.forward_passes == loop.steps


def test_a_step_hands_all_its_chunks_to_the_event_loop_in_one_call(tiny_mdlm):
    """One loop wake-up per step, whatever the number of requests and chunks in it."""
    requests = [request(tiny_mdlm, prompt, 16) for prompt in ("In the beginning", "And God said", "And the earth")]
    loop = StepLoop(build_engine(tiny_mdlm, max_batch_size=8))

    async def run() -> tuple[int, int, int]:
        event_loop = asyncio.get_running_loop()
        hand_overs, original = [], event_loop.call_soon_threadsafe
        event_loop.call_soon_threadsafe = lambda *a, **k: hand_overs.append(a) or original(*a, **k)
        steps_before = loop.steps
        counts = [0] * len(requests)

        async def count(i: int) -> None:
            async for _ in loop.submit(requests[i]).chunks():
                counts[i] += 1

        await asyncio.gather(*(count(i) for i in range(len(requests))))
        return len(hand_overs), loop.steps - steps_before, sum(counts)

    hand_overs, steps, chunks = asyncio.run(run())
    assert chunks > steps  # several requests' chunks per step: a hand-over per chunk would show
    assert hand_overs <= steps, (hand_overs, steps, chunks)


def test_the_replica_applies_its_gil_switch_interval():
    from dfast_serve.serve.replicas import ModelReplica

    before = sys.getswitchinterval()
    try:
        ModelReplica.func_or_class({"name": "tiny-mdlm", "engine": "diffusion"}, STANDARD,
                                   {"gil_switch_interval_ms": 0.25})
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    finally:
        sys.setswitchinterval(before)


def test_a_cancelled_request_leaves_the_batch_at_the_next_step(tiny_mdlm):
    engine = build_engine(tiny_mdlm, max_batch_size=8)
    loop = StepLoop(engine)

    async def run() -> tuple[int, str]:
        keeper = loop.submit(request(tiny_mdlm, "In the beginning", 32))
        leaver = loop.submit(request(tiny_mdlm, "And God said", 32))
        async for _ in leaver.chunks():
            leaver.cancel()  # the client went away after its first chunk
            break
        steps_at_cancel = loop.steps
        await until(lambda: loop.active == 1 or loop.steps >= steps_at_cancel + 2)
        active_after = loop.active
        text = await collect(keeper)
        return active_after, text

    active_after, text = asyncio.run(run())
    assert active_after == 1
    assert text == alone(tiny_mdlm, request(tiny_mdlm, "In the beginning", 32))


def test_a_request_that_fails_ends_alone_and_its_batch_mates_continue(tiny_mdlm):
    """One request's forward pass fails (a simulated out-of-memory on its long canvas): it gets the
    error, the request batched with it finishes with the text it has alone."""
    from dfast_serve.models.adapters import DiffusionLM
    from tests.engine.helpers import FailsOnLongCanvas

    short_req = request(tiny_mdlm, "In the beginning", 16)
    long_req = request(tiny_mdlm, "And God said " * 30, 16)
    fragile = DiffusionLM(tokenizer=tiny_mdlm.tokenizer, network=FailsOnLongCanvas(tiny_mdlm.network, 40),
                          mask_token_id=tiny_mdlm.mask_token_id, eos_token_ids=tiny_mdlm.eos_token_ids,
                          padded_batches=True, max_context=tiny_mdlm.max_context)
    loop = StepLoop(build_engine(fragile, max_batch_size=8))

    async def run() -> tuple[str, BaseException | None]:
        failing, fine = loop.submit(long_req), loop.submit(short_req)
        error = None
        try:
            await collect(failing)
        except RuntimeError as exc:
            error = exc
        return await collect(fine), error

    text, error = asyncio.run(run())
    assert isinstance(error, RuntimeError) and "out of memory" in str(error)
    assert text == alone(tiny_mdlm, short_req)


def test_a_request_that_cannot_start_gets_the_error_and_the_loop_goes_on(tiny_mdlm):
    engine = build_engine(tiny_mdlm, max_running=2)
    start = engine.family.start

    def start_or_fail(request: GenerationRequest):  # a fake fault at admission: only that request's
        if request.request_id == "doomed":
            raise ValueError("cannot start this one")
        return start(request)

    engine.family.start = start_or_fail
    loop = StepLoop(engine)
    doomed = GenerationRequest([1, 2, 3], SamplingParams(max_tokens=8), diffusion=STANDARD, request_id="doomed")
    fine = GenerationRequest([1, 2, 3], SamplingParams(max_tokens=8), diffusion=STANDARD)

    async def run() -> str:
        with pytest.raises(ValueError, match="cannot start this one"):
            await collect(loop.submit(doomed))
        return await collect(loop.submit(fine))

    assert asyncio.run(run()) == alone(tiny_mdlm, fine)


def test_every_dtype_batches_by_default_and_strict_is_opt_in():
    """The replica as Serve builds it (undeployed class, no Ray), on a bf16 model: what dtype auto picks on a GPU."""
    from dfast_serve.serve.replicas import ModelReplica

    bf16 = {"name": "tiny-mdlm", "engine": "diffusion", "device": "cpu", "dtype": "bfloat16"}
    stats = ModelReplica.func_or_class(bf16, replica={"max_batch_size": 6}).stats()
    assert (stats["max_batch_size"], stats["batch_invariance"]) == (6, "off")
    strict = ModelReplica.func_or_class(bf16, replica={"max_batch_size": 6, "batch_invariance": "strict"})
    assert strict.engine.family.batch_invariance == "strict" and strict.stats()["max_batch_size"] == 6
