"""The AR family (``engine/ar/family.py``) on a tiny random Llama (2 layers, 16-token vocabulary,
float32; milliseconds a pass): its answers against a plain greedy loop without any cache, alone and
batched, prefilled whole or in chunks, at strict batch invariance; which requests share a pass and
how many tokens each pass feeds; finish reasons and token counts; what it refuses."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM  # at import: mutmut's fork server preloads it

from dfast_serve.engine import EngineCore, GenerationRequest, SamplingParams
from dfast_serve.engine.ar.family import Autoregressive
from dfast_serve.engine.ar.shape import ArShape, layout
from dfast_serve.models.causal_lm import CausalLM
from dfast_serve.wire import APIError
from tests.engine.byte_tokenizer import ByteTokenizer

VOCAB = 16
PIECES = [bytes([ord("a") + i]) for i in range(VOCAB - 1)]  # ids 1..15 are "a".."o"; 0 is EOS


def tiny_llama(seed: int = 0, eos: frozenset[int] = frozenset({0}), max_context: int = 64) -> CausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    network = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # logits far apart, so that rounding never flips a greedy token
        network.lm_head.weight.mul_(40)
    return CausalLM(tokenizer=ByteTokenizer(PIECES), network=network, eos_token_ids=eos, max_context=max_context)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def greedy(model: CausalLM, prompt: list[int], max_tokens: int) -> list[int]:
    """The reference: the network run on the whole sequence every step, no cache, no padding."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_tokens):
            token = int(model.network(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            if token in model.eos_token_ids:
                break
    return ids[len(prompt):]


PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6, 5], [2, 7], [1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4, 5], [11, 12, 13, 14]]


def req(prompt, max_tokens=6, name="", **params) -> GenerationRequest:
    return GenerationRequest(list(prompt), SamplingParams(max_tokens=max_tokens, **params), request_id=name)


class Recorder:
    """The family's forward passes: (phase, request ids, tokens fed to each row)."""

    def __init__(self, family: Autoregressive) -> None:
        self.passes = []
        inner = family.forward

        def forward(pass_):
            self.passes.append((pass_.phase, [s.request.request_id for s in pass_.sequences],
                                [family._new_tokens(pass_, r) for r in range(len(pass_.sequences))]))
            return inner(pass_)

        family.forward = forward


def tokens_of(seq) -> list[int]:
    return list(seq.detokenizer.token_ids)


def run(engine: EngineCore, requests, join_at=None) -> dict[str, object]:
    """Step the requests together (request i joins before step ``join_at[i]``); each one's sequence."""
    join_at = join_at or [0] * len(requests)
    seqs, step = {}, 0
    while step <= max(join_at) or any(not s.finished for s in seqs.values()):
        for r, at in zip(requests, join_at):
            if at == step:
                seqs[r.request_id] = engine.start(r)
        running = [s for s in seqs.values() if not s.finished]
        if running:
            engine.step_sequences(running)
        step += 1
        assert step < 200
    for s in seqs.values():
        assert s.error is None, s.error
    return seqs


def expected(model, requests) -> dict[str, list[int]]:
    out = {}
    for r in requests:
        ids = greedy(model, r.prompt_ids, r.params.max_tokens)
        out[r.request_id] = [t for t in ids if t not in model.eos_token_ids]
    return out


def engine_of(model, **kwargs) -> EngineCore:
    max_running = kwargs.pop("max_running", None)
    family = Autoregressive(model, max_running=max_running, **kwargs)
    return EngineCore(family, max_running or family.max_batch_size)


REQUESTS = [req(p, max_tokens=6, name=f"r{i}") for i, p in enumerate(PROMPTS)]


def test_answers_alone_match_a_plain_greedy_loop(llama):
    want = expected(llama, REQUESTS)
    for r in REQUESTS:
        seqs = run(engine_of(llama), [r])
        assert tokens_of(seqs[r.request_id]) == want[r.request_id]


@pytest.mark.parametrize("kwargs", [{}, {"max_batch_size": 2}, {"step_token_budget": 9, "max_running": 4},
                                    {"batch_invariance": "strict", "step_token_budget": 9, "max_running": 4},
                                    {"batch_invariance": "strict", "max_batch_size": 2}])
def test_answers_batched_and_joining_midway_match_a_plain_greedy_loop(llama, kwargs):
    want = expected(llama, REQUESTS)
    seqs = run(engine_of(llama, **kwargs), REQUESTS, join_at=[0, 0, 2, 3])
    assert {name: tokens_of(s) for name, s in seqs.items()} == want


def test_a_model_whose_cache_cannot_be_stacked_runs_one_sequence_a_pass_with_the_same_answers():
    model = tiny_llama()
    model.merges_caches = False
    family = Autoregressive(model)
    recorder = Recorder(family)
    seqs = run(EngineCore(family), REQUESTS[:2])
    assert {name: tokens_of(s) for name, s in seqs.items()} == expected(model, REQUESTS[:2])
    assert all(len(names) == 1 for _, names, _ in recorder.passes)


def test_decodes_share_passes_of_max_batch_size_and_prompts_are_prefilled_alone_after_them(llama):
    family = Autoregressive(llama, max_batch_size=2)
    recorder = Recorder(family)
    seqs = [family.start(r) for r in REQUESTS[:3]]
    engine = EngineCore(family)
    engine.step_sequences(seqs)
    # shortest prompt first (r1: 2 tokens, r0: 9, r2: 14), each whole, one a pass
    assert recorder.passes == [("prefill", ["r1"], [2]), ("prefill", ["r0"], [9]), ("prefill", ["r2"], [14])]
    assert [s.cached for s in seqs] == [9, 2, 14] and [s.generated for s in seqs] == [1, 1, 1]
    recorder.passes.clear()
    engine.step_sequences(seqs)
    assert recorder.passes == [("decode", ["r0", "r1"], [1, 1]), ("decode", ["r2"], [1])]
    assert [s.cached for s in seqs] == [10, 3, 15] and [s.nfe for s in seqs] == [2, 2, 2]


def test_a_step_budget_chunks_long_prompts_after_one_token_per_decode(llama):
    family = Autoregressive(llama, max_batch_size=4, step_token_budget=8, max_running=4)
    recorder = Recorder(family)
    engine = EngineCore(family)
    short, long = family.start(REQUESTS[1]), family.start(REQUESTS[2])  # 2 and 14 prompt tokens
    engine.step_sequences([long, short])
    assert recorder.passes == [("prefill", ["r1"], [2]), ("prefill", ["r2"], [6])]
    assert (long.cached, long.generated, long.prefilling, short.prefilling) == (6, 0, True, False)
    assert long.pending == []  # nothing streamed before its prompt is in
    recorder.passes.clear()
    engine.step_sequences([long, short])
    assert recorder.passes == [("decode", ["r1"], [1]), ("prefill", ["r2"], [7])]
    recorder.passes.clear()
    engine.step_sequences([long, short])
    assert recorder.passes == [("decode", ["r1"], [1]), ("prefill", ["r2"], [1])]
    assert long.generated == 1 and not long.prefilling


def test_strict_prefill_chunks_are_the_budget_less_max_running_and_wait_for_room(llama):
    family = Autoregressive(llama, max_batch_size=2, batch_invariance="strict", step_token_budget=7, max_running=2)
    assert family.chunk_tokens == 5
    recorder = Recorder(family)
    engine = EngineCore(family)
    a, b = family.start(REQUESTS[0]), family.start(REQUESTS[3])  # 9 and 4 prompt tokens
    engine.step_sequences([a, b])
    assert recorder.passes == [("prefill", ["r3"], [4])]  # 4 + min(9, 5) > 7: r0 waits
    recorder.passes.clear()
    engine.step_sequences([a, b])
    assert recorder.passes == [("decode", ["r3"], [1]), ("prefill", ["r0"], [5])]
    recorder.passes.clear()
    engine.step_sequences([a, b])
    assert recorder.passes == [("decode", ["r3"], [1]), ("prefill", ["r0"], [4])]


def test_strict_decode_passes_group_by_shape_and_fill_the_rows(llama):
    family = Autoregressive(llama, max_batch_size=3, batch_invariance="strict")
    engine = EngineCore(family)
    shapes = []
    inner = family.forward

    def forward(pass_):
        shapes.append((pass_.phase, len(pass_.sequences), pass_.shape))
        return inner(pass_)

    family.forward = forward
    longer = req(PROMPTS[2] + PROMPTS[0], name="long")  # 23 prompt tokens
    seqs = [family.start(r) for r in (REQUESTS[1], REQUESTS[0], longer)]  # 2, 9, 23 prompt tokens
    engine.step_sequences(seqs)
    assert shapes == [("prefill", 1, ArShape(16, 0, 1)), ("prefill", 1, ArShape(16, 0, 1)),
                      ("prefill", 1, ArShape(32, 0, 1))]
    shapes.clear()
    engine.step_sequences(seqs)
    # r1 (2 cached) and r0 (9 cached) share a bucket of 16 key columns; the long one has its own of 32;
    # rows = max_batch_size
    assert shapes == [("decode", 2, ArShape(1, 15, 3)), ("decode", 1, ArShape(1, 31, 3))]
    want = expected(llama, [REQUESTS[1], REQUESTS[0], longer])
    while not all(s.finished for s in seqs):
        engine.step_sequences([s for s in seqs if not s.finished])
    assert [tokens_of(s) for s in seqs] == [want["r1"], want["r0"], want["long"]]


def test_a_decode_group_keeps_its_batch_cache_while_its_members_stay(llama):
    family = Autoregressive(llama, max_batch_size=4)
    engine = EngineCore(family)
    seqs = [family.start(req(p, max_tokens=n, name=str(i))) for i, (p, n) in enumerate(zip(PROMPTS[:3], (3, 6, 6)))]
    engine.step_sequences(seqs)
    engine.step_sequences(seqs)
    (key, group), = family._groups.items()
    engine.step_sequences(seqs)
    assert list(family._groups.values()) == [group]  # the same group, its cache appended in place
    engine.step_sequences([s for s in seqs if not s.finished])
    assert group not in family._groups.values() and len(family._groups) == 1  # a member ended: re-formed


def test_the_answer_stops_at_eos_or_max_tokens_with_its_count():
    want = greedy(tiny_llama(eos=frozenset()), PROMPTS[0], 8)
    eos = want[3]
    model = tiny_llama(eos=frozenset({eos}))
    seq = run(engine_of(model), [req(PROMPTS[0], max_tokens=8, name="r")])["r"]
    assert (tokens_of(seq), seq.generated, seq.finish_reason) == (want[:3], 3, "stop")
    assert want.index(eos) == 3  # the EOS is the first one
    seq = run(engine_of(model), [req(PROMPTS[0], max_tokens=3, name="r")])["r"]
    assert (tokens_of(seq), seq.generated, seq.finish_reason, seq.progress()) == (want[:3], 3, "length", 1.0)
    seq = run(engine_of(model), [req(PROMPTS[0], max_tokens=8, name="r", ignore_eos=True)])["r"]
    assert seq.finish_reason == "length" and seq.generated == 8


def test_each_token_streams_as_it_is_decoded(llama):
    family = Autoregressive(llama)
    seq = family.start(req(PROMPTS[1], max_tokens=4))
    engine = EngineCore(family)
    counts = []
    while not seq.finished:
        engine.step_sequences([seq])
        counts.append([c.total_tokens for c in seq.drain()])
        assert seq.progress() == seq.generated / 4
    assert counts == [[1], [2], [3], [4]]


def test_sampling_follows_the_seed(llama):
    def sampled(seed):
        return tokens_of(run(engine_of(llama), [req(PROMPTS[0], max_tokens=8, name="r", temperature=5.0,
                                                    seed=seed)])["r"])

    assert sampled(1) == sampled(1) and sampled(1) != sampled(2)


def test_the_budget_must_exceed_the_requests_running_and_a_batch_holds_one(llama):
    with pytest.raises(ValueError, match="max_batch_size"):
        Autoregressive(llama, max_batch_size=0)
    with pytest.raises(ValueError, match=r"step_token_budget \(4\) must exceed the requests running at once \(4\)"):
        Autoregressive(llama, max_batch_size=4, step_token_budget=4)
    with pytest.raises(ValueError, match=r"\(3\)"):
        Autoregressive(llama, max_batch_size=8, step_token_budget=3, max_running=3)
    assert Autoregressive(llama, max_batch_size=4, step_token_budget=5).chunk_tokens == 1
    Autoregressive(llama, max_batch_size=1)


def test_a_request_must_fit_the_models_context_and_have_a_prompt(llama):
    family = Autoregressive(llama)
    family.validate(req([1] * 60, max_tokens=4))
    with pytest.raises(APIError) as refused:
        family.validate(req([1] * 60, max_tokens=5))
    assert refused.value.param == "max_tokens"
    with pytest.raises(APIError) as refused:
        family.validate(req([], max_tokens=1))
    assert refused.value.param == "prompt"


def test_a_lone_sequences_cache_is_first_sized_for_its_prompt_and_some_answer(llama):
    family = Autoregressive(llama)
    short = family.start(req(PROMPTS[1], max_tokens=3))
    long = family.start(req(PROMPTS[1], max_tokens=500))
    assert family._reserve(short) == 5 and family._reserve(long) == 2 + 64


def test_ar_shapes_keep_a_padding_column_and_lay_rows_right_aligned():
    assert ArShape.of(0, 15, 1) == ArShape(16, 0, 1) and ArShape.of(0, 16, 1) == ArShape(32, 0, 1)  # bucket(n + 1)
    assert ArShape.of(14, 1, 4) == ArShape(1, 15, 4)  # bucket(14 + 1 + 1) = 16 columns, one is the input
    assert ArShape.of(15, 1, 4) == ArShape(1, 31, 4) and ArShape.of(15, 2, 4) == ArShape(2, 30, 4)
    ids, positions, mask = layout([torch.tensor([7, 8]), torch.tensor([9])], [0, 3], ArShape(2, 4, 3), torch.device("cpu"))
    assert ids.tolist() == [[7, 8], [0, 9], [0, 0]]
    assert positions.tolist() == [[0, 1], [0, 3], [0, 0]]
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="2 rows do not fit a pass of 1"):
        layout([torch.tensor([1]), torch.tensor([2])], [0, 0], ArShape(1, 0, 1), torch.device("cpu"))


# ---- numbers, caches, defaults ---------------------------------------------------------------------
def logits_by_request(family: Autoregressive) -> dict[str, list[torch.Tensor]]:
    """Each request's logits from every pass it took part in, in order (wrapping ``forward``)."""
    seen: dict[str, list[torch.Tensor]] = {}
    inner = family.forward

    def forward(pass_):
        logits, row_cache = inner(pass_)
        for row, seq in enumerate(pass_.sequences):
            seen.setdefault(seq.request.request_id, []).append(logits[row].clone())
        return logits, row_cache

    family.forward = forward
    return seen


@pytest.mark.parametrize("kwargs", [{}, {"batch_invariance": "strict", "max_batch_size": 4}])
def test_a_shared_decode_pass_gives_each_row_the_logits_it_has_alone(llama, kwargs):
    alone = {}
    for r in REQUESTS:
        family = Autoregressive(llama)  # alone, on its own cache, unpadded: the reference
        seen = logits_by_request(family)
        run(EngineCore(family), [r])
        alone.update(seen)
    family = Autoregressive(llama, **kwargs)
    together = logits_by_request(family)
    run(EngineCore(family), REQUESTS, join_at=[0, 0, 2, 3])
    for name, rows in alone.items():
        assert len(together[name]) == len(rows)
        for a, b in zip(rows, together[name]):
            assert torch.allclose(a, b, atol=1e-4, rtol=0), name


def test_top_k_and_top_p_cut_what_is_sampled(llama):
    greedy_answer = tokens_of(run(engine_of(llama), [req(PROMPTS[0], max_tokens=8, name="r")])["r"])
    for cut in ({"top_p": 1e-6}, {"top_k": 1}):
        seqs = run(engine_of(llama), [req(PROMPTS[0], max_tokens=8, name="r", temperature=50.0, seed=3, **cut)])
        assert tokens_of(seqs["r"]) == greedy_answer, cut


def test_a_stop_string_ends_the_answer_before_it(llama):
    answer = greedy(llama, PROMPTS[2], 6)
    text = llama.tokenizer.decode(answer)
    stop = text[3]  # the fourth token's letter: the answer ends before its first occurrence
    seq = run(engine_of(llama), [req(PROMPTS[2], max_tokens=6, name="r", stop=[stop])])["r"]
    assert seq.finish_reason == "stop" and "".join(c.new_text for c in seq.pending) == text[: text.index(stop)]


def test_by_default_eight_decodes_share_a_pass(llama):
    family = Autoregressive(llama)
    recorder = Recorder(family)
    seqs = [family.start(req([i + 1, 2], max_tokens=3, name=str(i))) for i in range(9)]
    engine = EngineCore(family)
    engine.step_sequences(seqs)
    recorder.passes.clear()
    engine.step_sequences([s for s in seqs if not s.finished])
    assert [len(names) for phase, names, _ in recorder.passes if phase == "decode"][:2] == [8, 1]
    with pytest.raises(ValueError, match="^max_batch_size must be at least 1$"):
        Autoregressive(llama, max_batch_size=0)


def test_a_strict_prefill_chunk_that_exactly_fills_what_is_left_runs_in_the_same_step(llama):
    family = Autoregressive(llama, max_batch_size=2, batch_invariance="strict", step_token_budget=7, max_running=2)
    recorder = Recorder(family)
    engine = EngineCore(family)
    a, b = family.start(req([1, 2], name="a")), family.start(req([3, 4], name="b"))
    long = family.start(req(PROMPTS[2], name="long"))  # 14 tokens: chunks of 5
    engine.step_sequences([a, b])
    recorder.passes.clear()
    engine.step_sequences([a, b, long])  # 2 decodes leave 5: the chunk of 5 fits exactly
    assert [(phase, names, fed) for phase, names, fed in recorder.passes if phase == "prefill"] == [
        ("prefill", ["long"], [5])]


def test_without_strict_a_prefill_feeds_the_prompt_unpadded_into_a_cache_sized_for_some_answer(llama):
    shapes = []
    handle = llama.network.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        family = Autoregressive(llama)
        seq = family.start(req(PROMPTS[0], max_tokens=5))
        EngineCore(family).step_sequences([seq])
    finally:
        handle.remove()
    assert shapes == [(1, 9)]
    assert seq.past_key_values.layers[0]._keys.shape[-2] == 9 + 5  # the prompt and max_tokens (under 64)


def test_a_lone_decode_runs_on_its_own_cache_and_a_new_batch_cache_keeps_room_to_grow(llama):
    family = Autoregressive(llama)
    engine = EngineCore(family)
    lone = family.start(req(PROMPTS[0], max_tokens=5))
    engine.step_sequences([lone])
    own = lone.past_key_values
    engine.step_sequences([lone])
    (group,) = family._groups.values()
    assert group.cache is own  # taken over as is: no copy
    family = Autoregressive(llama)
    engine = EngineCore(family)
    pair = [family.start(req(PROMPTS[0], max_tokens=5)), family.start(req(PROMPTS[1], max_tokens=5))]
    engine.step_sequences(pair)
    engine.step_sequences(pair)
    (group,) = family._groups.values()
    assert group.cache.layers[0]._keys.shape[-2] == 9 + 64  # the longest past, then 64 columns of room
