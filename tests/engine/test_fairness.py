"""No request can slow the others beyond a token budget (issue: hardening, round 2, item 2).

A request with a long canvas, a block as long, the standard schedule (one pass per token) and
top-p sampling over the whole vocabulary used to share every step with everyone: each short
request's pass waited on (or was padded to) the long canvas. With ``step_token_budget`` the engine
runs, each step, the requests with the fewest canvas tokens so far, as many as fit the budget, and
packs passes so a long canvas never pads short ones. Measured in canvas tokens, never in time.
"""

from __future__ import annotations

from dfast_serve.engine import build_engine
from dfast_serve.wire.options import DiffusionOptions
from dfast_serve.engine import GenerationRequest, SamplingParams

BUDGET = 256


def worst_request(model) -> GenerationRequest:
    ids = model.encode_chat([{"role": "user", "content": "Recite Genesis 1:1."}])
    max_tokens = BUDGET - len(ids)
    options = DiffusionOptions(ultra_fast=False, block_length=max_tokens, confidence="entropy")
    return GenerationRequest(ids, SamplingParams(max_tokens=max_tokens, temperature=1.0, top_p=0.9, seed=1), options)


def normal_request(model) -> GenerationRequest:
    ids = model.encode_chat([{"role": "user", "content": "Recite Psalms 23:1."}])
    return GenerationRequest(ids, SamplingParams(max_tokens=32), DiffusionOptions())


def run_beside(engine, normal_req, worst_req):
    """Step both until the normal request ends; log each pass as (has the normal request, canvas tokens)."""
    log: list[tuple[bool, int]] = []
    forward = engine.family.forward

    def logged(pass_):
        log.append((any(seq is normal for seq in pass_.sequences), len(pass_.sequences) * max(p.tokens for p in pass_.plans)))
        return forward(pass_)

    engine.family.forward = logged
    normal, worst = engine.start(normal_req), engine.start(worst_req)
    text = ""
    while not normal.finished:
        engine.step_sequences([s for s in (normal, worst) if not s.finished])
        text += "".join(c.new_text for c in normal.drain())
    return log, text, worst


def tokens_around_each_pass(log):
    """For each pass of the normal request: canvas tokens of that pass plus those of the other passes
    it waited on since its previous pass."""
    out, waited = [], 0
    for has_normal, tokens in log:
        if has_normal:
            out.append(waited + tokens)
            waited = 0
        else:
            waited += tokens
    return out


def test_a_long_request_never_costs_a_short_one_more_than_the_budget_per_pass(tiny_mdlm):
    engine = build_engine(tiny_mdlm, max_batch_size=8, step_token_budget=BUDGET)
    log, text, worst = run_beside(engine, normal_request(tiny_mdlm), worst_request(tiny_mdlm))
    per_pass = tokens_around_each_pass(log)
    normal_canvas = len(normal_request(tiny_mdlm).prompt_ids) + 32
    assert max(per_pass) <= BUDGET + normal_canvas
    assert not worst.finished and worst.nfe < len(per_pass)  # the long one got fewer passes meanwhile
    alone = "".join(c.new_text for c in build_engine(tiny_mdlm).generate(normal_request(tiny_mdlm)))
    assert text == alone


def test_without_a_budget_the_long_request_rides_every_step(tiny_mdlm):
    """The same pair with no budget: every normal pass shares (is padded to) the long canvas."""
    engine = build_engine(tiny_mdlm, max_batch_size=8, step_token_budget=None)
    log, _, _ = run_beside(engine, normal_request(tiny_mdlm), worst_request(tiny_mdlm))
    assert min(tokens_around_each_pass(log)) > BUDGET


def test_passes_pack_short_slices_apart_from_long_ones(tiny_mdlm):
    engine = build_engine(tiny_mdlm, max_batch_size=8, step_token_budget=BUDGET)
    sequences = [engine.start(normal_request(tiny_mdlm)) for _ in range(3)] + [engine.start(worst_request(tiny_mdlm))]
    plans = {id(s): s.forward_plan() for s in sequences}
    passes = engine.family._passes(sequences, plans)
    assert [len(p) for p in passes] == [3, 1]
    assert all(len(p) * max(plans[id(s)].tokens for s in p) <= BUDGET for p in passes)
