"""Prefill pacing (``engine/ar/pacing.py``): chunks sized in time from the replica's measured passes, a
step's prefill within that time, and decoding requests owed half of the time. The pacer's arithmetic alone,
then the AR family's steps with a pacer whose measurements are set by the test (timings are not asserted)."""

from __future__ import annotations

import math

import pytest

from dfast_serve.engine import EngineCore
from dfast_serve.engine.ar.family import Autoregressive
from dfast_serve.engine.ar.pacing import MIN_CHUNK, PrefillPacer
from tests.engine.ar.test_family import Recorder, engine_of, expected, req, run, tiny_llama


def measured(chunk_decodes: float = 4.0, span: float = 1000.0, decode_s: float = 0.01, rate: float = 0.001
             ) -> PrefillPacer:
    return PrefillPacer(chunk_decodes, span, decode_s=decode_s, rate=rate)


def test_a_chunk_fills_the_time_left_by_the_model_of_a_pass():
    pacer = measured()  # target 0.04 s: 0.01 overhead, 30 weighted tokens at 1 ms
    assert pacer.target == pytest.approx(0.04)
    n = pacer.chunk(0, pacer.target)
    assert pacer.seconds(n, 0) <= pacer.target < pacer.seconds(n + 1, 0)
    # deep in a long prompt a token attends to more: fewer tokens fit
    deep = pacer.chunk(3000, pacer.target)
    assert deep < n and pacer.seconds(deep, 3000) <= pacer.target < pacer.seconds(deep + 1, 3000)
    assert pacer.chunk(0, 0.0) == MIN_CHUNK  # no time left: the smallest chunk, never none


def test_an_unmeasured_pacer_bounds_nothing_and_the_first_pass_of_each_kind_is_not_measured():
    pacer = PrefillPacer(4.0, 1000.0)
    assert not pacer.ready and pacer.target == math.inf and pacer.chunk(0, 1.0) > 10**9
    pacer.observed_decode(5.0)  # the first: lazy initialisation
    pacer.observed_prefill(9.0, 10, 0, decoding=False)
    assert pacer.decode_s is None and pacer.rate is None
    pacer.observed_decode(0.01)
    pacer.observed_prefill(0.03, 10, 0, decoding=False)
    assert pacer.decode_s == pytest.approx(0.01) and pacer.rate == pytest.approx(0.02 / pacer.weight(10, 0))


def test_prefill_beside_decodes_is_owed_back_in_decode_time():
    pacer = measured()
    pacer.observed_prefill(0.04, 30, 0, decoding=True)
    assert not pacer.may_continue(decoding=True)
    pacer.observed_decode(0.03)
    assert not pacer.may_continue(decoding=True)
    pacer.observed_decode(0.02)
    assert pacer.may_continue(decoding=True)
    pacer.observed_prefill(0.04, 30, 0, decoding=True)
    assert pacer.may_continue(decoding=False)  # nobody decodes: nobody is owed


def paced(llama, **pacer) -> tuple[Autoregressive, Recorder]:
    family = Autoregressive(llama, max_batch_size=4, step_token_budget=64, max_running=4, chunk_decodes=4.0)
    family.pacer = measured(span=llama.attention_span, **pacer)
    family.pacer._seen = frozenset({"decode", "prefill"})
    return family, Recorder(family)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def test_a_long_prompt_is_chunked_by_time_and_a_short_newcomer_fills_the_step_first(llama):
    family, recorder = paced(llama, rate=0.005)  # 0.03 s of prefill a step: 6 weighted tokens
    long, short = family.start(req(list(range(1, 15)) * 2, name="long")), family.start(req([2, 7], name="short"))
    chunks = []
    family.forward = lambda pass_, inner=family.forward: (chunks.append(pass_.plan(0)), inner(pass_))[1]
    family.pacer.observed_prefill = lambda *a, **k: None  # keep the test's measurements
    family.pacer.observed_decode = lambda *a, **k: None
    EngineCore(family).step_sequences([long])
    first = family.pacer.chunk(0, family.pacer.target)
    assert chunks == [first] and first < 28  # not the token budget's 60: the step's time
    EngineCore(family).step_sequences([long, short])
    assert [names for _, names, _ in recorder.passes[1:]] == [["short"]]  # the newcomer took the step's time


def test_a_started_prompt_waits_while_decodes_are_owed_time_but_a_new_one_does_not(llama):
    family, recorder = paced(llama, rate=0.005)
    decoding, long = family.start(req([2, 7], name="dec")), family.start(req(list(range(1, 15)) * 2, name="long"))
    engine = EngineCore(family)
    engine.step_sequences([decoding])  # its prefill: it decodes from now on
    engine.step_sequences([decoding, long])  # a decode, then the long prompt's first chunk (it had not started)
    assert [(phase, names) for phase, names, _ in recorder.passes[1:]] == [("decode", ["dec"]), ("prefill", ["long"])]
    family.pacer.owed = 1.0  # as if that chunk had taken a second
    recorder.passes.clear()
    engine.step_sequences([decoding, long])
    assert [(phase, names) for phase, names, _ in recorder.passes] == [("decode", ["dec"])]
    family.pacer.owed = 1.0
    recorder.passes.clear()
    newcomer = family.start(req([3, 4, 5], name="new"))
    engine.step_sequences([decoding, long, newcomer])
    assert [(phase, names) for phase, names, _ in recorder.passes] == [("decode", ["dec"]), ("prefill", ["new"])]


def test_paced_answers_equal_the_plain_greedy_loop(llama):
    requests = [req(list(range(1, 15)) * 2, max_tokens=5, name="long"), req([2, 7], max_tokens=6, name="short")]
    engine = engine_of(llama, max_batch_size=4, step_token_budget=64, max_running=4, chunk_decodes=4.0)
    engine.family.pacer = measured(span=llama.attention_span, rate=0.005)
    seqs = run(engine, requests, join_at=[0, 1])
    assert {name: [t for t in s.detokenizer.token_ids if t not in llama.eos_token_ids] for name, s in seqs.items()} \
        == expected(llama, requests)


def test_strict_batch_invariance_never_paces(llama):
    assert Autoregressive(llama, batch_invariance="strict", step_token_budget=64, chunk_decodes=4.0).pacer is None
    assert Autoregressive(llama, step_token_budget=64, chunk_decodes=None).pacer is None
