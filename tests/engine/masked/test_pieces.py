"""Long diffusion passes in pieces (``pass_piece_tokens``): the network's forward in blocks of rows
(``BidirectionalLM.pieces``), the sampling a few positions at a time, one piece a step, with other requests'
passes between them and a new request's short first pass first; what a request decides does not change."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dfast_serve.engine import EngineCore
from dfast_serve.engine.masked.family import PIECE, MaskedDiffusion
from dfast_serve.models.pieces import drive
from tests.engine.masked.test_family import GEN, REQUESTS, Recorder, alone, decided, options, req, run
from tests.engine.masked.tiny import tiny_masked


@pytest.fixture(scope="module")
def model():
    return tiny_masked()


def test_the_network_in_pieces_computes_what_it_computes_whole(model):
    ids = torch.randint(1, 20, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        whole, whole_kv = model.network(ids, mask, positions, return_kv=True, logits_to_keep=5)
        pieces = model.network.pieces(2, ids, mask, positions, return_kv=True, logits_to_keep=5)
        yields = 0
        while True:
            try:
                next(pieces)
                yields += 1
            except StopIteration as done:
                cut, cut_kv = done.value
                break
    layers = len(model.network.layers)
    assert yields == layers * (1 + 6) + 3  # per layer: its keys/values, then 6 blocks of 2 rows; 3 of the output
    torch.testing.assert_close(cut, whole)
    for (k, v), (k2, v2) in zip(whole_kv, cut_kv):
        torch.testing.assert_close(k2, k) and torch.testing.assert_close(v2, v)
    torch.testing.assert_close(drive(model.network.pieces(None, ids, mask, positions, logits_to_keep=5)), whole)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_requests_in_pieces_decide_what_they_decide_whole(model, cache):
    requests = [dataclasses.replace(r, diffusion=options(4, cache=cache)) for r in REQUESTS]
    family = MaskedDiffusion(model, step_token_budget=26, pass_piece_tokens=8)  # r2 (19 tokens) in pieces
    recorder = Recorder(family)
    seqs = run(family, requests, join_at=[0, 0, 2, 3])
    assert {name: decided(s) for name, s in seqs.items()} == alone(model, requests)
    assert sum(1 for names, tokens in recorder.passes if not tokens) == 0
    assert any(p.phase == PIECE for p in recorder.kinds)


def test_a_long_pass_runs_a_piece_a_step_with_a_short_requests_passes_between(model):
    long = req([1] * 30, "long", max_tokens=GEN, opts=options(block=GEN))  # a canvas of 38
    short = req([2, 7], "short")
    family = MaskedDiffusion(model, step_token_budget=64, pass_piece_tokens=6)  # short (10) whole, long in pieces
    recorder = Recorder(family)
    engine = EngineCore(family)
    seqs = {"long": family.start(long)}
    engine.step_sequences([seqs["long"]])
    assert recorder.kinds[-1].phase == PIECE and seqs["long"].nfe == 0  # its first pass is under way
    seqs["short"] = family.start(short)
    steps = []
    while not seqs["short"].finished:
        recorder.kinds.clear()
        engine.step_sequences([s for s in seqs.values() if not s.finished])
        steps.append([(p.phase, p.sequences[0].request.request_id) for p in recorder.kinds])
        assert len(steps) < 100
    assert steps[0] == [("forward", "short")]  # the newcomer's first pass, in a step of its own
    # every later step: at most one piece of the long pass beside the short request's pass
    assert all(sum(1 for phase, _ in step if phase == PIECE) <= 1 for step in steps)
    # and the short request is never two steps in a row without a pass of its own
    ran = [("forward", "short") in step for step in steps]
    assert not any(not a and not b for a, b in zip(ran, ran[1:])), steps
    assert any(("piece", "long") in step for step in steps[1:])  # the long pass went on meanwhile


def test_without_pieces_a_long_pass_runs_whole(model):
    family = MaskedDiffusion(model, step_token_budget=64, pass_piece_tokens=None)
    recorder = Recorder(family)
    run(family, [req([1] * 30, "long", max_tokens=GEN, opts=options(block=GEN))])
    assert all(p.phase != PIECE for p in recorder.kinds) and len(recorder.kinds) == GEN


def test_strict_batch_invariance_and_a_network_without_pieces_run_passes_whole():
    assert MaskedDiffusion(tiny_masked(), pass_piece_tokens=4, batch_invariance="strict").pass_piece_tokens is None
    remote = tiny_masked()
    remote.network.pieces = None  # as hub remote code: no pieces
    assert MaskedDiffusion(remote, pass_piece_tokens=4).pass_piece_tokens is None
