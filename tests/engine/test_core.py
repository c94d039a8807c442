"""The engine core (``engine/core.py``) on a counting family that runs no model: admission (how many,
in what order, within which token cap), what a step hands back per request, which requests share a
pass, and how a failing pass or advance ends only the request that causes it. Milliseconds each."""

from __future__ import annotations

import logging

import pytest
import torch

from dfast_serve.engine.core import EngineCore, Pass, reserved_tokens
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.engine.sampling import make_generator
from dfast_serve.engine.sequence import Sequence
from dfast_serve.wire import APIError, SamplingParams, bad_request
from tests.engine.byte_tokenizer import EOS, ByteTokenizer

WORDS = [b"a", b"b", b"c", b"d", b"e", b"f"]  # ids 1..6


class Counting(Sequence):
    """Says one more word each pass it is advanced in: ids 1, 2, 3, ..."""

    said = 0

    def progress(self) -> float:
        return self.said / self.target_tokens


class CountingFamily:
    """Packs running sequences ``max_batch_size`` a pass; ``forward`` fails for any pass holding a
    request whose prompt starts with ``bad_forward`` (as an out-of-memory would), ``advance`` for one
    starting with ``bad_advance``, ``start`` for ``bad_start``, ``validate`` for an empty prompt."""

    kind = "counting"

    def __init__(self, max_batch_size: int = 2, bad_forward: int = 90, bad_advance: int = 91, bad_start: int = 92):
        self.max_batch_size = max_batch_size
        self.bad_forward, self.bad_advance, self.bad_start = bad_forward, bad_advance, bad_start
        self.passes: list[tuple[str, list[str]]] = []  # (phase, request ids) of every forward call

    def validate(self, request):
        if not request.prompt_ids:
            raise bad_request("empty", "prompt")

    def start(self, request):
        if request.prompt_ids[0] == self.bad_start:
            raise ValueError("cannot start")
        return Counting(request, StreamingDetokenizer(ByteTokenizer(WORDS), []), frozenset({EOS}),
                        make_generator(0, torch.device("cpu")))

    def schedule(self, sequences):
        for i in range(0, len(sequences), self.max_batch_size):
            yield Pass(sequences[i:i + self.max_batch_size], plans=[s.said + 1 for s in sequences[i:i + self.max_batch_size]],
                       phase="count")

    def forward(self, pass_):
        self.passes.append((pass_.phase, [s.request.request_id for s in pass_.sequences]))
        if any(s.request.prompt_ids[0] == self.bad_forward for s in pass_.sequences):
            raise RuntimeError("out of memory (simulated)")
        return [pass_.plan(row) for row in range(len(pass_.sequences))]

    def advance(self, seq, row, output, pass_):
        if seq.request.prompt_ids[0] == self.bad_advance:
            raise ValueError("bad row")
        seq.nfe += 1
        seq.said = pass_.plan(row)  # the pass says what each row is at
        assert output[row] == seq.said
        seq.emit([seq.said], exhausted=seq.said >= seq.target_tokens)


def req(name: str, prompt: int = 3, max_tokens: int = 2, first: int = 1) -> GenerationRequest:
    return GenerationRequest([first] + [1] * (prompt - 1), SamplingParams(max_tokens=max_tokens), request_id=name)


def core(max_running: int = 8, max_running_tokens: int | None = None, **family) -> EngineCore:
    return EngineCore(CountingFamily(**family), max_running=max_running, max_running_tokens=max_running_tokens)


def by_owner(outputs):
    return {o.owner: ("".join(c.new_text for c in o.chunks), o.finished, type(o.error).__name__ if o.error else None)
            for o in outputs}


def test_a_pass_retried_alone_keeps_its_phase_shape_and_that_rows_plan():
    pass_ = Pass(["x", "y", "z"], plans=[10, 20, 30], phase="denoise", shape=(4, 8))
    alone = pass_.alone(1)
    assert (alone.sequences, alone.plans, alone.phase, alone.shape) == (["y"], [20], "denoise", (4, 8))
    assert alone.plan(0) == 20 and pass_.plan(2) == 30
    bare = Pass(["x", "y"]).alone(1)
    assert (bare.sequences, bare.plans, bare.plan(0), bare.phase, bare.shape) == (["y"], None, None, "forward", None)


def test_reserved_tokens_are_the_prompt_and_max_tokens():
    assert reserved_tokens(req("r", prompt=7, max_tokens=5)) == 12


def test_each_step_returns_every_running_requests_new_text_and_drops_the_finished():
    engine = core()
    assert (engine.kind, engine.max_batch_size, engine.has_work) == ("counting", 2, False)
    engine.add(req("one", max_tokens=1), "one")
    engine.add(req("two", max_tokens=3), "two")
    assert (engine.waiting, engine.running, engine.has_work) == (2, 0, True)
    first = engine.step()
    assert by_owner(first) == {"one": ("a", True, None), "two": ("a", False, None)}
    assert first[1].chunks[0].is_first and not first[1].finished
    assert (engine.waiting, engine.running, engine.running_tokens) == (0, 1, 6)
    assert by_owner(engine.step()) == {"two": ("b", False, None)}
    last = engine.step()
    assert by_owner(last) == {"two": ("c", True, None)} and last[0].chunks[-1].finish_reason == "length"
    assert (engine.running, engine.has_work, engine.step()) == (0, False, [])


def test_at_most_max_running_requests_run_and_the_rest_start_in_arrival_order():
    engine = core(max_running=2)
    for name in ("a", "b", "c"):
        engine.add(req(name, max_tokens=1), name)
    assert [o.owner for o in engine.step()] == ["a", "b"] and engine.waiting == 1
    assert [o.owner for o in engine.step()] == ["c"] and not engine.has_work


def test_the_token_cap_admits_up_to_its_exact_sum_and_no_later_request_overtakes_the_head():
    engine = core(max_running_tokens=20)
    engine.add(req("a", prompt=5, max_tokens=5), "a")  # 10
    engine.add(req("b", prompt=5, max_tokens=5), "b")  # 20: exactly the cap
    engine.add(req("c", prompt=1, max_tokens=1), "c")  # 2: over it, and waits
    engine.step()
    assert (engine.running, engine.waiting, engine.running_tokens) == (2, 1, 20)
    engine = core(max_running_tokens=20)
    engine.add(req("a", prompt=5, max_tokens=5), "a")
    engine.add(req("big", prompt=6, max_tokens=5), "big")  # 11: 21 would exceed the cap
    engine.add(req("small", prompt=1, max_tokens=1), "small")
    engine.step()
    assert (engine.running, engine.waiting) == (1, 2)  # the small one does not overtake the head


def test_a_request_over_the_cap_still_starts_when_nothing_runs():
    engine = core(max_running_tokens=4)
    engine.add(req("a", prompt=3, max_tokens=3), "a")
    assert [o.owner for o in engine.step()] == ["a"] and engine.running == 1


def test_validate_refuses_what_the_family_refuses_and_what_exceeds_the_token_cap():
    engine = core(max_running_tokens=10)
    engine.validate(req("fits", prompt=5, max_tokens=5))
    with pytest.raises(APIError) as refused:
        engine.validate(req("over", prompt=5, max_tokens=6))
    assert refused.value.param == "max_tokens" and refused.value.message.endswith("(the replica's max_running_tokens)")
    with pytest.raises(APIError) as refused:
        engine.validate(GenerationRequest([], SamplingParams(max_tokens=1)))
    assert refused.value.param == "prompt"
    core().validate(req("any size without a cap", prompt=500, max_tokens=500))


def test_a_request_that_cannot_start_ends_with_its_error_and_the_next_one_starts():
    engine = core(max_running=1)
    engine.add(req("bad", first=92), "bad")
    engine.add(req("good", max_tokens=1), "good")
    outputs = engine.step()
    assert by_owner(outputs) == {"bad": ("", True, "ValueError"), "good": ("a", True, None)}
    assert outputs[0].chunks == [] and not engine.has_work


def test_abort_forgets_only_that_callers_request_waiting_or_running():
    engine = core(max_running=1)
    mine, theirs, other = ["owner"], ["owner"], ["owner"]  # equal, not the same caller
    engine.add(req("r1", max_tokens=5), mine)
    engine.step()
    engine.add(req("r2", max_tokens=5), theirs)
    engine.add(req("r3", max_tokens=5), other)
    engine.abort(theirs)
    assert (engine.running, engine.waiting) == (1, 1)
    engine.abort(mine)
    assert (engine.running, engine.waiting) == (0, 1)
    assert [o.owner is other for o in engine.step()] == [True]


def test_a_failing_pass_is_rerun_one_request_at_a_time_and_fails_only_its_cause(caplog):
    engine = core(max_batch_size=4)
    engine.add(req("ok1"), "ok1")
    engine.add(req("boom", first=90), "boom")
    engine.add(req("ok2"), "ok2")
    with caplog.at_level(logging.WARNING, logger="dfast_serve.engine.core"):
        outputs = engine.step()
    assert by_owner(outputs) == {"ok1": ("a", False, None), "boom": ("", True, "RuntimeError"),
                                 "ok2": ("a", False, None)}
    assert engine.family.passes == [("count", ["ok1", "boom", "ok2"]), ("count", ["ok1"]), ("count", ["boom"]),
                                    ("count", ["ok2"])]
    assert engine.forward_passes == 4 and engine.failed_in_a_row == 0  # the last pass ran
    assert [r.getMessage() for r in caplog.records] == [
        "a count pass of 3 sequences failed (RuntimeError); running each alone",
        "a count pass failed for request boom: RuntimeError: out of memory (simulated)"]
    engine.step()
    assert engine.family.passes[-1] == ("count", ["ok1", "ok2"])  # the survivors share a pass again


def test_passes_that_fail_even_alone_are_counted_until_one_runs():
    engine = core(max_batch_size=1)
    engine.add(req("boom1", first=90), "boom1")
    engine.add(req("boom2", first=90), "boom2")
    engine.step()
    assert engine.failed_in_a_row == 2 and engine.forward_passes == 2
    engine.add(req("ok"), "ok")
    engine.step()
    assert engine.failed_in_a_row == 0


def test_a_failing_advance_fails_that_request_and_its_pass_mates_go_on():
    engine = core(max_batch_size=4)
    engine.add(req("bad", first=91), "bad")
    engine.add(req("ok"), "ok")
    assert by_owner(engine.step()) == {"bad": ("", True, "ValueError"), "ok": ("a", False, None)}
    assert engine.forward_passes == 1


def test_generate_yields_one_requests_chunks_and_raises_its_error():
    engine = core()
    chunks = list(engine.generate(req("r", max_tokens=3)))
    assert "".join(c.new_text for c in chunks) == "abc" and chunks[-1].is_final
    with pytest.raises(RuntimeError, match="simulated"):
        list(engine.generate(req("boom", first=90)))
    with pytest.raises(APIError):
        engine.start(GenerationRequest([], SamplingParams(max_tokens=1)))
    assert isinstance(engine.start(req("s")), Counting)


def test_generate_polls_should_stop_before_every_step():
    engine = core()
    polls = []

    def stop_after_two():
        polls.append(len(polls))
        return len(polls) > 2

    chunks = list(engine.generate(req("r", max_tokens=5), should_stop=stop_after_two))
    assert "".join(c.new_text for c in chunks) == "ab" and len(polls) == 3
    assert len(engine.family.passes) == 2
