"""The masked-diffusion family (``engine/masked/family.py``) on a tiny random model (milliseconds a pass):
a request decides what plain LLaDA decoding decides, alone and whoever shares its passes (padded, packed
under a token budget, in fixed shapes, on a model that cannot pad, with a cached context); which requests
share a pass and how often a long one runs beside short ones; what it refuses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dfast_serve.engine import EngineCore, EngineLimits, GenerationRequest, SamplingParams
from dfast_serve.engine.masked.family import FILTERED_LOGITS_PER_TOKEN, PLAIN_LOGITS_PER_TOKEN, MaskedDiffusion
from dfast_serve.wire import APIError, DiffusionOptions
from tests.engine.masked.tiny import EOS, MASK, low_confidence_reference, tiny_masked, up_to_eos

GEN = 8
PROMPTS = [[3, 1, 4, 1, 5], [2, 7], [9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11], [15, 16, 17]]


@pytest.fixture(scope="module")
def model():
    return tiny_masked()


def options(block: int = 4, steps: int = GEN, **kwargs) -> DiffusionOptions:
    return DiffusionOptions(ultra_fast=False, steps=steps, block_length=block, **kwargs)


def req(prompt, name="", max_tokens=GEN, opts=None, **params) -> GenerationRequest:
    return GenerationRequest(list(prompt), SamplingParams(max_tokens=max_tokens, **params), opts or options(),
                             request_id=name)


REQUESTS = [req(p, f"r{i}") for i, p in enumerate(PROMPTS)]


class Recorder:
    """Every forward pass of ``family``: the request ids sharing it and the canvas tokens each computes."""

    def __init__(self, family: MaskedDiffusion) -> None:
        self.passes: list[tuple[list[str], list[int]]] = []
        inner = family.forward

        self.kinds = []  # every pass itself (its phase: a whole pass or a piece of one)

        def forward(pass_):
            self.passes.append(([s.request.request_id for s in pass_.sequences], [p.tokens for p in pass_.plans]))
            self.kinds.append(pass_)
            return inner(pass_)

        family.forward = forward

    def who(self) -> list[list[str]]:
        return [names for names, _ in self.passes]


def run(family: MaskedDiffusion, requests, join_at=None) -> dict[str, object]:
    """Step the requests together (request i joins before step ``join_at[i]``); each one's sequence."""
    join_at = join_at or [0] * len(requests)
    seqs, step = {}, 0
    while step <= max(join_at) or any(not s.finished for s in seqs.values()):
        for r, at in zip(requests, join_at):
            if at == step:
                seqs[r.request_id] = family.start(r)
        running = [s for s in seqs.values() if not s.finished]
        if running:
            EngineCore(family).step_sequences(running)
        step += 1
        assert step < 100
    for s in seqs.values():
        assert s.error is None, s.error
    return seqs


def decided(seq) -> list[int]:
    return up_to_eos(seq.answer.tolist())


def text(seq) -> str:
    return "".join(c.new_text for c in seq.pending)


@pytest.mark.parametrize("block", [GEN, 4, 2])
def test_a_request_alone_decides_what_plain_llada_decoding_does(model, block):
    for r in REQUESTS:
        r = dataclasses.replace(r, diffusion=options(block))
        seq = run(MaskedDiffusion(model), [r])[r.request_id]
        want = up_to_eos(low_confidence_reference(model, r.prompt_ids, GEN, block))
        assert decided(seq) == want
        assert text(seq) == model.tokenizer.decode(want) and seq.nfe == GEN


def alone(model, requests) -> dict[str, list[int]]:
    return {r.request_id: decided(run(MaskedDiffusion(model), [r])[r.request_id]) for r in requests}


@pytest.mark.parametrize("kwargs", [
    {}, {"max_batch_size": 2}, {"step_token_budget": 26}, {"step_token_budget": 40, "max_batch_size": 3},
    {"batch_invariance": "strict"}, {"batch_invariance": "strict", "step_token_budget": 32},
])
def test_requests_sharing_passes_decide_as_they_would_alone(model, kwargs):
    want = alone(model, REQUESTS)
    seqs = run(MaskedDiffusion(model, **kwargs), REQUESTS, join_at=[0, 0, 2, 3])
    assert {name: decided(s) for name, s in seqs.items()} == want


@pytest.mark.parametrize("strict", [False, True])
def test_a_model_that_cannot_pad_shares_passes_only_among_equal_canvases(strict):
    model = tiny_masked(padded_batches=False, kv_cache=False)
    requests = [req([1, 2, 3], "a"), req([4, 5, 6], "b"), req([7, 8], "c"), req([9, 10, 11], "d")]
    family = MaskedDiffusion(model, max_batch_size=2, batch_invariance="strict" if strict else "off")
    recorder = Recorder(family)
    seqs = run(family, requests)
    assert {name: decided(s) for name, s in seqs.items()} == alone(model, requests)
    first_step = recorder.who()[:3]
    assert first_step == ([["a"], ["b"], ["c"]] if strict else [["a", "b"], ["d"], ["c"]])


def test_without_a_budget_every_request_runs_every_step_in_passes_of_max_batch_size(model):
    family = MaskedDiffusion(model, max_batch_size=3)
    recorder = Recorder(family)
    run(family, REQUESTS[:4])
    # shortest canvas first: r1 (10), r3 (11), r0 (13) | r2 (19)
    assert recorder.who()[:4] == [["r1", "r3", "r0"], ["r2"], ["r1", "r3", "r0"], ["r2"]]


def test_under_a_budget_a_long_canvas_runs_about_once_per_its_cost_in_short_passes(model):
    short_a, short_b = req([1, 2, 3, 4, 5], "a"), req([6, 7, 8, 9, 10], "b")  # canvases of 13
    long = req([1] * 8, "long", max_tokens=32, opts=options(block=32, steps=32))  # canvas of 40, over the budget
    family = MaskedDiffusion(model, step_token_budget=32)
    recorder = Recorder(family)
    seqs = [family.start(r) for r in (short_a, short_b, long)]
    engine = EngineCore(family)
    for _ in range(6):
        engine.step_sequences([s for s in seqs if not s.finished])
    # fair finish times (work + cost): the shorts at 13, 26, 39, 52, ...; the long one at 40, alone (13 + 40 > 32):
    # it runs once the shorts' next finish (52) passes it, then not before they have done 40 more
    assert recorder.who() == [["a", "b"]] * 3 + [["long"]] + [["a", "b"]] * 2
    assert recorder.passes[0][1] == [13, 13] and recorder.passes[3][1] == [40]
    assert [s.work for s in seqs] == [65, 65, 40]


def test_a_newcomer_starts_from_the_least_work_so_far_not_from_zero(model):
    family = MaskedDiffusion(model, step_token_budget=13)
    recorder = Recorder(family)
    first = family.start(req([1, 2, 3, 4, 5], "first"))
    engine = EngineCore(family)
    engine.step_sequences([first])
    engine.step_sequences([first])
    late = family.start(req([6, 7, 8, 9, 10], "late"))
    for _ in range(4):
        engine.step_sequences([first, late])
    # the newcomer counts from 26 (not 0): the two alternate, instead of the newcomer running 2 passes in a row
    # (or, raised to the other's work at every step, never)
    assert recorder.who() == [["first"], ["first"], ["first"], ["late"], ["first"], ["late"]]


def test_the_sampling_work_of_a_pass_counts_in_canvas_tokens(model):
    family = MaskedDiffusion(model)
    family.vocab = 4096
    seq = family.start(req([1, 2], max_tokens=8))
    assert family.sampling_work(seq, 8) == 8 * 4096 // PLAIN_LOGITS_PER_TOKEN
    for params in ({"temperature": 1.0, "top_k": 5}, {"temperature": 1.0, "top_p": 0.5}):
        filtered = family.start(req([1, 2], max_tokens=8, **params))
        assert family.sampling_work(filtered, 8) == 8 * 4096 // FILTERED_LOGITS_PER_TOKEN == 32
    for params in ({"temperature": 0.0, "top_k": 5}, {"temperature": 1.0, "top_k": 4096},
                   {"temperature": 1.0, "top_p": 1.0}):
        plain = family.start(req([1, 2], max_tokens=8, **params))
        assert family.sampling_work(plain, 8) == 1, params
    assert MaskedDiffusion(model).start(req([1], max_tokens=2)).work == 0
    seqs = run(MaskedDiffusion(model), [req([1, 2], "r", temperature=1.0, top_k=3)])
    assert seqs["r"].work == GEN * 10  # vocab 24: sampling costs no canvas token here; 8 passes of 10


def test_prefix_cache_passes_compute_the_block_onward_between_refreshes(model):
    family = MaskedDiffusion(model)
    recorder = Recorder(family)
    seq = run(family, [req(PROMPTS[0], "r", opts=options(block=4, cache="prefix"))])["r"]
    # canvas 13 = prompt 5 + 8; block 1 is answer [0, 4): a full refresh, then [5, 13); block 2 likewise
    # from 9 (the standard path has no last pass that must score everything)
    assert [tokens for _, (tokens,) in recorder.passes] == [13, 8, 8, 8, 13, 4, 4, 4]
    assert len(decided(seq)) == GEN or EOS in seq.answer.tolist()
    assert MASK not in seq.answer.tolist()


def test_dual_cache_passes_compute_only_the_block(model):
    family = MaskedDiffusion(model)
    recorder = Recorder(family)
    run(family, [req(PROMPTS[0], "r", opts=options(block=4, cache="dual"))])
    assert [tokens for _, (tokens,) in recorder.passes] == [13, 4, 4, 4, 13, 4, 4, 4]


def test_a_model_without_a_cache_ignores_the_cache_option():
    model = tiny_masked(kv_cache=False)
    family = MaskedDiffusion(model)
    recorder = Recorder(family)
    run(family, [req(PROMPTS[0], "r", opts=options(block=4, cache="dual"))])
    assert all(tokens == [13] for _, tokens in recorder.passes)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_requests_sharing_passes_decide_as_they_would_alone(model, cache):
    requests = [req(p, f"r{i}", opts=options(block=4, cache=cache)) for i, p in enumerate(PROMPTS)]
    want = {r.request_id: decided(run(MaskedDiffusion(model), [r])[r.request_id]) for r in requests}
    for kwargs in ({}, {"batch_invariance": "strict"}):
        seqs = run(MaskedDiffusion(model, **kwargs), requests, join_at=[0, 1, 1, 2])
        assert {name: decided(s) for name, s in seqs.items()} == want, kwargs


def test_the_mask_token_is_never_an_answer():
    model = tiny_masked()
    with torch.no_grad():
        model.network.lm_head.weight[MASK] = model.network.lm_head.weight[3] * 2  # the mask the best token
    seq = run(MaskedDiffusion(model), [req(PROMPTS[0], "r")])["r"]
    assert MASK not in seq.answer.tolist() and decided(seq) == up_to_eos(
        low_confidence_reference(model, PROMPTS[0], GEN, 4))


def test_a_request_must_fit_the_block_cap_the_canvas_cap_and_the_context(model):
    family = MaskedDiffusion(model, limits=EngineLimits(max_block_length=16, max_canvas_tokens=40))
    family.validate(req([1] * 8, max_tokens=32, opts=options(block=16)))
    with pytest.raises(APIError) as refused:
        family.validate(req([1] * 8, opts=options(block=17)))
    assert refused.value.param == "dfast.block_length"
    assert refused.value.message == "dfast.block_length 17 exceeds this model's max_block_length of 16"
    with pytest.raises(APIError) as refused:
        family.validate(req([1] * 8, max_tokens=33))
    assert refused.value.param == "max_tokens" and "(replica.max_canvas_tokens)" in refused.value.message
    roomy = MaskedDiffusion(model, limits=EngineLimits(max_canvas_tokens=1000))
    roomy.validate(req([1] * 8, max_tokens=88, opts=options(block=4)))
    with pytest.raises(APIError) as refused:
        roomy.validate(req([1] * 8, max_tokens=89))
    assert refused.value.message.endswith("(its context)")
    MaskedDiffusion(model).validate(req([1] * 8, max_tokens=64, opts=options(block=64)))
    with pytest.raises(APIError) as refused:
        family.validate(req([], "r"))
    assert refused.value.param == "prompt"
    with pytest.raises(ValueError, match="^max_batch_size must be at least 1$"):
        MaskedDiffusion(model, max_batch_size=0)
    MaskedDiffusion(model, max_batch_size=1)


def test_a_request_without_options_runs_with_the_defaults(model):
    seq = MaskedDiffusion(model).start(GenerationRequest([1, 2], SamplingParams(max_tokens=4)))
    assert seq.options == DiffusionOptions() and seq.canvas.tolist() == [1, 2, MASK, MASK, MASK, MASK]
    assert seq.kv is None and seq.prompt_len == 2


# ---- the numbers a pass hands back, its shapes, the fair turns at their edges ----------------------
def answer_logits(family: MaskedDiffusion) -> dict[str, list[torch.Tensor]]:
    """Each request's logits over the answer positions of every pass, from what ``forward`` returns; under
    the key ``"widths"``, (positions returned, longest answer slice) of every pass not in a fixed shape."""
    seen: dict[str, list] = {"widths": []}
    inner = family.forward

    def forward(pass_):
        out = inner(pass_)
        if pass_.shape is None:  # a fixed-shape pass is never trimmed
            seen["widths"].append((out[0].shape[1], max(p.end - max(p.start, s.prompt_len)
                                                        for s, p in zip(pass_.sequences, pass_.plans))))
        for row, (seq, plan) in enumerate(zip(pass_.sequences, pass_.plans)):
            scored = plan.end - max(plan.start, seq.prompt_len)
            seen.setdefault(seq.request.request_id, []).append(out[0][row, -scored:].clone())
        return out

    family.forward = forward
    return seen


@pytest.mark.parametrize("kwargs, cache", [({}, "none"), ({"batch_invariance": "strict"}, "none"),
                                           ({}, "prefix"), ({"batch_invariance": "strict"}, "dual"),
                                           ({"batch_invariance": "strict", "uncached model": True}, "none")])
def test_a_shared_pass_gives_each_row_the_logits_it_has_alone(model, kwargs, cache):
    if kwargs.pop("uncached model", False):
        model = tiny_masked(kv_cache=False)
    requests = [req(p, f"r{i}", opts=options(block=4, cache=cache)) for i, p in enumerate(PROMPTS)]
    alone = {}
    for r in requests:
        family = MaskedDiffusion(model)  # alone, unpadded: the reference
        seen = answer_logits(family)
        run(family, [r])
        assert all(got == want for got, want in seen.pop("widths"))  # only the answer positions come back
        alone.update(seen)
    family = MaskedDiffusion(model, **kwargs)
    together = answer_logits(family)
    run(family, requests, join_at=[0, 0, 1, 2])
    widths = together.pop("widths")
    assert all(got == want for got, want in widths) and (widths or kwargs)
    for name, rows in alone.items():
        assert len(together[name]) == len(rows)
        for a, b in zip(rows, together[name]):
            assert torch.allclose(a, b, atol=1e-4, rtol=0), name


def test_strict_passes_run_in_their_buckets_fixed_shape(model):
    shapes = []
    handle = model.network.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        run(MaskedDiffusion(model, batch_invariance="strict", max_batch_size=4), [req(PROMPTS[1], "r")])
        run(MaskedDiffusion(model, batch_invariance="strict", max_batch_size=4, step_token_budget=32),
            [req(PROMPTS[1], "r")])
    finally:
        handle.remove()
    # canvas 10 runs in the bucket of 16; rows: max_batch_size, or as many of 16 as the budget holds
    assert shapes == [(4, 16)] * GEN + [(2, 16)] * GEN


def start_all(family, specs):
    """Sequences in a state the test sets: (name, canvas prompt length, work, sampling params)."""
    seqs = []
    for name, prompt_len, work, params in specs:
        seq = family.start(req([1] * prompt_len, name, **params))
        seq.work, seq.nfe, seq.clocked = work, 1, True
        seqs.append(seq)
    return seqs


def turn(family, seqs) -> list[list[str]]:
    return [[s.request.request_id for s in p.sequences] for p in family.schedule(seqs)]


@pytest.mark.parametrize("budget, expected", [(26, [["a", "b"]]), (25, [["a"]]), (30, [["a", "b"]])])
def test_a_step_takes_requests_while_their_canvases_fit_the_budget(model, budget, expected):
    family = MaskedDiffusion(model, step_token_budget=budget)
    assert turn(family, start_all(family, [("a", 5, 0, {}), ("b", 5, 0, {}), ("c", 5, 0, {})])) == expected


def test_a_step_takes_those_finishing_within_one_short_pass_of_the_first(model):
    family = MaskedDiffusion(model, step_token_budget=100)
    # finishes: a 13, b 26 (= 13 + the shortest cost 13: taken), c 27 (not)
    assert turn(family, start_all(family, [("a", 5, 0, {}), ("b", 18, 0, {}), ("c", 19, 0, {})])) == [["a", "b"]]
    # finishes: a 13, l 20 (over the budget beside a), b 23: b still joins
    family = MaskedDiffusion(model, step_token_budget=30)
    assert turn(family, start_all(family, [("a", 5, 0, {}), ("l", 12, 0, {}), ("b", 5, 10, {})])) == [["a", "b"]]


def test_a_request_whose_sampling_costs_more_waits_behind_a_plain_one(model):
    family = MaskedDiffusion(model, step_token_budget=100)
    family.vocab = 8192  # as if learned from a pass: 8 sampled positions cost 64 canvas tokens with top-k
    seqs = start_all(family, [("sampled", 5, 0, {"temperature": 1.0, "top_k": 1}), ("plain", 5, 0, {})])
    assert turn(family, seqs) == [["plain"]]


def test_a_newcomer_after_one_pass_of_another_counts_from_that_pass(model):
    family = MaskedDiffusion(model, step_token_budget=13)
    recorder = Recorder(family)
    first = family.start(req([1, 2, 3, 4, 5], "first"))
    engine = EngineCore(family)
    engine.step_sequences([first])
    late = family.start(req([6, 7, 8, 9, 10], "late"))
    for _ in range(4):
        engine.step_sequences([first, late])
    assert recorder.who() == [["first"], ["first"], ["late"], ["first"], ["late"]]


@pytest.mark.parametrize("budget, expected", [(37, [["a"], ["b"]]), (38, [["a", "b"]])])
def test_a_pass_holds_rows_times_its_longest_slice_within_the_budget(model, budget, expected):
    family = MaskedDiffusion(model, step_token_budget=budget)
    assert turn(family, start_all(family, [("a", 2, 0, {}), ("b", 11, 0, {})])) == expected  # canvases 10, 19


def test_a_cached_slice_and_a_full_canvas_never_share_a_pass(model):
    family = MaskedDiffusion(model)
    recorder = Recorder(family)
    cached = options(block=4, cache="prefix")
    run(family, [req(PROMPTS[0], "early", opts=cached), req(PROMPTS[3], "late", opts=cached)], join_at=[0, 1])
    assert recorder.passes[1:3] == [(["early"], [8]), (["late"], [11])]


def test_a_canvas_cap_equal_to_the_context_is_blamed_on_the_context(model):
    family = MaskedDiffusion(model, limits=EngineLimits(max_canvas_tokens=96))
    with pytest.raises(APIError) as refused:
        family.validate(req([1] * 8, max_tokens=89))
    assert refused.value.message.endswith("(its context)")


def test_by_default_eight_requests_share_a_pass(model):
    family = MaskedDiffusion(model)
    assert turn(family, start_all(family, [(str(i), 5, 0, {}) for i in range(9)])) == [[str(i) for i in range(8)],
                                                                                       ["8"]]


def test_sampling_counts_nothing_before_the_first_pass_teaches_the_vocabulary(model):
    family = MaskedDiffusion(model)
    sampled = family.start(req([1, 2], "s", temperature=1.0, top_p=0.5))
    assert family.sampling_work(sampled, 4096) == 0
    run(family, [req([1, 2], "r")])
    assert family.sampling_work(sampled, 1024) == 24  # the tiny model's 24 logits a position, filtered


def test_a_pass_adds_its_canvas_and_its_sampling_to_the_requests_work(model):
    family = MaskedDiffusion(model)
    seq = family.start(req([1, 2], "r", max_tokens=64, opts=options(block=64, steps=64), temperature=1.0, top_k=3))
    EngineCore(family).step_sequences([seq])
    assert seq.work == 66 + 64 * 24 // FILTERED_LOGITS_PER_TOKEN  # 66 canvas tokens, 64 positions sampled


def test_a_stop_string_ends_the_answer_before_it(model):
    want = model.tokenizer.decode(up_to_eos(low_confidence_reference(model, PROMPTS[0], GEN, 4)))
    stop = want[2]
    seq = run(MaskedDiffusion(model), [req(PROMPTS[0], "r", stop=[stop])])["r"]
    assert seq.finish_reason == "stop" and text(seq) == want[: want.index(stop)]


def test_a_model_with_shifted_logits_recomputes_one_position_before_the_block():
    shifted = dataclasses.replace(tiny_masked(), shift_logits=True)
    seq = MaskedDiffusion(shifted).start(req(PROMPTS[0], "r", opts=options(block=4, cache="prefix")))
    seq.keep_kv([(torch.zeros(1, 13, 2), torch.zeros(1, 13, 2))])
    assert (seq.forward_plan().start, seq.forward_plan().context_len) == (4, 4)  # prompt 5, one early
