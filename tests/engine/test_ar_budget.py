"""The AR engine's token budget (issue #24, Medium 3): chunked prefill within ``step_token_budget``,
decodes never padded to a prompt, admission by reserved tokens. Counted in positions per forward
call (a pre-hook on the network records each call's input shape), never in time."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from dfast_serve.engine import EngineCore, GenerationRequest, SamplingParams, build_engine
from dfast_serve.wire import APIError

LONG = ("Summarize the following passage in one sentence. In the beginning God created the heaven and the earth. "
        "And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God "
        "moved upon the face of the waters. And God said, Let there be light: and there was light. And God saw the "
        "light, that it was good: and God divided the light from the darkness.")


@pytest.fixture(scope="module")
def smollm2_fp32():
    """float32: chunked and whole prefill differ only by rounding there, so greedy tokens agree."""
    from dfast_serve.models.embedded import load_smollm2

    return load_smollm2(dtype="float32")


class Calls:
    """Every forward call's (rows, input columns) on ``model``'s network, while in a ``with`` block."""

    def __init__(self, model) -> None:
        self.model, self.shapes = model, []

    def __enter__(self) -> "Calls":
        def record(module, args, kwargs):
            self.shapes.append(tuple(kwargs["input_ids"].shape))

        self.handle = self.model.network.register_forward_pre_hook(record, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def take(self) -> list[tuple[int, int]]:
        shapes, self.shapes = self.shapes, []
        return shapes


def request(model, text, max_tokens, **params):
    return GenerationRequest(model.encode_chat([{"role": "user", "content": text}]),
                             SamplingParams(max_tokens=max_tokens, **params))


def tokens_of(engine, req) -> list[int]:
    seq = engine.start(req)
    while not seq.finished:
        engine.step_sequences([seq])
    assert seq.error is None, seq.error
    return list(seq.detokenizer.token_ids)


def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_greedy_answer(smollm2_fp32):
    model = smollm2_fp32
    req = request(model, LONG, 16, ignore_eos=True)
    prompt = len(req.prompt_ids)
    budget = 40
    assert prompt > 2 * budget
    whole = build_engine(model)  # no budget: one prefill pass
    chunked = build_engine(model, max_batch_size=2, step_token_budget=budget)
    with Calls(model) as calls:
        expected = tokens_of(whole, req)
        assert calls.take()[0] == (1, prompt)
        seq = chunked.start(req)
        steps = 0
        while seq.prefilling:
            chunked.step_sequences([seq])
            steps += 1
            assert seq.drain() == [] or not seq.prefilling  # no token before the last chunk
        shapes = calls.take()
    # a lone sequence takes the whole budget a step: ceil(prompt / budget) chunks, one pass each
    assert steps == -(-prompt // budget) and [n for _, n in shapes] == [budget] * (steps - 1) + [prompt - budget * (steps - 1)]
    assert seq.generated == 1 and seq.nfe == steps  # the first token is sampled after the last chunk
    while not seq.finished:
        chunked.step_sequences([seq])
    assert list(seq.detokenizer.token_ids) == expected  # token for token


def test_decodes_are_never_padded_to_a_prompt_and_a_step_keeps_its_budget(smollm2):
    budget = 24
    engine = build_engine(smollm2, max_batch_size=4, step_token_budget=budget)
    short = [engine.start(request(smollm2, q, 40, ignore_eos=True)) for q in ("Why?", "Hi.")]
    while any(s.prefilling for s in short):
        engine.step_sequences(short)
    long = engine.start(request(smollm2, LONG, 4))
    with Calls(smollm2) as calls:
        engine.step_sequences(short + [long])  # the step right after it arrives
        first = calls.take()
        assert long.cached > 0  # the new prompt's first chunk is in that step
        steps = 1
        while long.prefilling:
            before = [s.generated for s in short]
            engine.step_sequences(short + [long])
            steps += 1
            assert [s.generated for s in short] == [b + 1 for b in before]  # decodes advance every step
            shapes = calls.take()
            assert sorted(shapes) == sorted([(2, 1), (1, shapes[-1][1])])  # one decode pass, one chunk pass
            assert sum(rows * columns for rows, columns in shapes) <= budget
    assert first == [(2, 1), (1, budget - 2)]
    assert steps > 2


def test_a_new_short_prompt_goes_before_a_long_one_halfway_through_its_chunks(smollm2):
    budget = 40
    engine = build_engine(smollm2, max_batch_size=4, step_token_budget=budget)
    long = engine.start(request(smollm2, LONG, 4))
    engine.step_sequences([long])
    short = engine.start(request(smollm2, "Why?", 4))
    n = len(short.request.prompt_ids)
    with Calls(smollm2) as calls:
        engine.step_sequences([long, short])  # the long one arrived first and is running
    assert calls.take() == [(1, n), (1, budget - n)]  # the new short prompt whole, the long one the rest
    assert not short.prefilling and short.generated == 1 and long.cached == budget + budget - n


def test_strict_prefill_runs_in_one_row_with_fixed_chunks(smollm2):
    """Strict batch invariance: decode passes keep their dummy rows, a prefill pass has one row (its shape
    depends on its own prompt only) and chunks of budget - max_running whatever runs beside it."""
    engine = build_engine(smollm2, max_batch_size=4, step_token_budget=36, batch_invariance="strict")
    decode = engine.start(request(smollm2, "Why?", 20, ignore_eos=True))
    engine.step_sequences([decode])
    long = engine.start(request(smollm2, LONG, 2))
    with Calls(smollm2) as calls:
        while long.prefilling:
            engine.step_sequences([decode, long])
        shapes = calls.take()
    prefill = [s for s in shapes if s[1] > 1]
    assert all(rows == 1 for rows, _ in prefill) and len(prefill) > 1
    assert all(s == (4, 1) for s in shapes if s[1] == 1)
    assert long.cached == len(long.request.prompt_ids) and engine.family.chunk_tokens == 32


# ---- admission by tokens: the core alone, with a family that runs nothing ----------------------------------
@dataclass(eq=False)
class Idle:
    request: GenerationRequest
    finished: bool = False
    error: Exception | None = None
    chunks: list = field(default_factory=list)

    def drain(self):
        return []


class NoModel:
    kind, max_batch_size = "test", 8

    def validate(self, request):
        pass

    def start(self, request):
        return Idle(request)

    def schedule(self, sequences):
        return []


def sized(prompt: int, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(list(range(1, prompt + 1)), SamplingParams(max_tokens=max_tokens))


def test_admission_holds_a_request_back_while_its_tokens_would_exceed_the_cap():
    core = EngineCore(NoModel(), max_running=8, max_running_tokens=1000)
    for owner, (prompt, answer) in enumerate([(300, 200), (200, 100), (400, 100), (10, 10)]):
        core.add(sized(prompt, answer), owner)
    core.step()
    assert (core.running, core.waiting, core.running_tokens) == (2, 2, 800)  # 500 + 300; the third (500) waits
    core.step()
    assert core.running == 2  # and the small fourth does not overtake it
    core.abort(0)
    core.step()
    assert (core.running, core.waiting, core.running_tokens) == (3, 0, 820)
    unbounded = EngineCore(NoModel(), max_running=8)
    for owner in range(3):
        unbounded.add(sized(900, 900), owner)
    unbounded.step()
    assert unbounded.running == 3


def test_a_request_larger_than_the_cap_is_refused_up_front(smollm2):
    core = build_engine(smollm2, max_running_tokens=100)
    core.validate(sized(50, 50))
    with pytest.raises(APIError) as refused:
        core.validate(sized(50, 51))
    assert refused.value.status == 400 and refused.value.param == "max_tokens"
    with pytest.raises(APIError) as refused:
        core.validate(sized(100, 1))
    assert refused.value.param == "prompt"


def test_the_budget_must_leave_room_for_a_prefill_token(smollm2):
    with pytest.raises(ValueError):
        build_engine(smollm2, max_batch_size=4, step_token_budget=4)
    assert build_engine(smollm2, max_batch_size=4, step_token_budget=5).family.chunk_tokens == 1


# ---- the KV cache is appended in place, not copied every step ----------------------------------------------
class Stacks:
    """Counts ``model.stack_caches`` calls (each copies every cache it is given into a new batch cache)."""

    def __init__(self, model, monkeypatch) -> None:
        self.count, stack = 0, model.stack_caches

        def counted(*args, **kwargs):
            self.count += 1
            return stack(*args, **kwargs)

        monkeypatch.setattr(model, "stack_caches", counted)


def buffers(seq) -> set[int]:
    """Where a sequence's cache lives: its layers' key buffers."""
    cache = seq.past_key_values
    cache = getattr(cache, "cache", cache)  # a row of a batch cache
    return {layer._keys.data_ptr() for layer in cache.layers}


def test_a_stable_decode_group_appends_to_one_batch_cache(smollm2, monkeypatch):
    stacks = Stacks(smollm2, monkeypatch)
    engine = build_engine(smollm2, max_batch_size=4)
    group = [engine.start(request(smollm2, q, n, ignore_eos=True)) for q, n in (("Why?", 12), ("Hi.", 12), ("Say yes.", 5))]
    engine.step_sequences(group)  # the prefills, each on a cache of its own
    assert stacks.count == 0 and not any(s.prefilling for s in group)
    engine.step_sequences(group)  # the decode group forms: one stack
    assert stacks.count == 1
    where = buffers(group[0])
    while not group[2].finished:
        engine.step_sequences([s for s in group if not s.finished])
        assert buffers(group[0]) == where == buffers(group[1])  # the same buffers, written in place
    assert stacks.count == 1  # no copy while the members stay
    engine.step_sequences([s for s in group if not s.finished])  # one ended: the others regroup once
    engine.step_sequences([s for s in group if not s.finished])
    assert stacks.count == 2 and buffers(group[0]) != where


def test_a_lone_request_never_copies_its_cache(smollm2, monkeypatch):
    stacks = Stacks(smollm2, monkeypatch)
    engine = build_engine(smollm2, max_batch_size=4, step_token_budget=64)
    seq = engine.start(request(smollm2, LONG, 24, ignore_eos=True))
    engine.step_sequences([seq])
    where = buffers(seq)
    while not seq.finished:
        engine.step_sequences([seq])
        assert buffers(seq) == where  # chunks and decodes extend the one cache sized for the request
    assert stacks.count == 0 and seq.cached == len(seq.request.prompt_ids) + 23


def test_a_growing_layer_writes_in_place_and_doubles_when_full(smollm2):
    from dfast_serve.models.causal_lm import growing_layer

    layer = growing_layer()(4)
    k = torch.arange(2 * 3 * 3 * 2, dtype=torch.float32).reshape(2, 3, 3, 2)
    keys, _ = layer.update(k, -k)
    buffer = layer._keys.data_ptr()
    keys, values = layer.update(k[:, :, :1], -k[:, :, :1])  # fits: in place
    assert layer._keys.data_ptr() == buffer and keys.shape == (2, 3, 4, 2) and layer.get_seq_length() == 4
    keys, values = layer.update(k, -k)  # full: doubled, contents kept
    assert layer._keys.shape[-2] == 8 and layer.get_seq_length() == 7
    assert torch.equal(keys, torch.cat([k, k[:, :, :1], k], dim=2)) and torch.equal(values, -keys)


def test_a_failed_group_pass_is_retried_alone_on_the_caches_it_had(smollm2_fp32):
    """A decode group's pass fails midway (after writing some layers' columns): each member is run alone
    from the columns it had, and every answer is what it is without the failure."""
    model = smollm2_fp32
    reqs = [request(model, q, 6, ignore_eos=True) for q in ("Why?", "Hi.", "Say yes.")]
    expected = [tokens_of(build_engine(model), r) for r in reqs]
    engine = build_engine(model, max_batch_size=4)
    seqs = [engine.start(r) for r in reqs]
    state = {"passes": 0}

    def fail_third_group_pass(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] > 1:
            state["passes"] += 1
            if state["passes"] == 3:  # the third group pass, at layer 5: layers 0-4 have written their columns
                raise RuntimeError("out of memory (simulated)")

    handle = model.network.model.layers[5].register_forward_pre_hook(fail_third_group_pass, with_kwargs=True)
    try:
        while any(not s.finished for s in seqs):
            engine.step_sequences([s for s in seqs if not s.finished])
    finally:
        handle.remove()
    assert state["passes"] == 5 and engine.forward_passes == 3 + 5 + 3  # prefills, group passes (one failed), 3 alone
    assert [list(s.detokenizer.token_ids) for s in seqs] == expected and all(s.error is None for s in seqs)
