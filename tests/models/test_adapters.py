"""LLaDA- and Dream-style adapters (``models/adapters.py``) on tiny random networks built from configs (no hub access)."""

from __future__ import annotations

import torch
from torch import nn

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import build_engine
from dfast_serve.engine import GenerationRequest, SamplingParams
from dfast_serve.models.adapters import wrap_dream, wrap_llada
from dfast_serve.models.bidirectional import BidirectionalConfig, BidirectionalLM
from tests.engine.helpers import text_of


class IdTokenizer:
    """Decodes id n as 'tN ' (the tiny random models have no real vocabulary)."""

    eos_token_id = 2
    mask_token_id = None

    def decode(self, ids, **_):
        return "".join(f"t{i} " for i in ids)

    def encode(self, text):
        return [int(w[1:]) for w in text.split()]


def test_llada_style_random_model_generates_with_mask_id_126336():
    cfg = BidirectionalConfig(vocab_size=126464, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                              intermediate_size=64, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True)
    torch.manual_seed(0)
    adapter = wrap_llada(BidirectionalLM(cfg).eval(), IdTokenizer())
    assert adapter.mask_token_id == 126336 and not adapter.shift_logits
    assert {126081, 126348} <= adapter.eos_token_ids
    engine = build_engine(adapter)
    options = DiffusionOptions(ultra_fast=False, steps=8, block_length=8)
    chunks = list(engine.generate(GenerationRequest([5, 6, 7], SamplingParams(max_tokens=8), options)))
    assert chunks[-1].is_final
    assert text_of(chunks) == IdTokenizer().decode(reference_answer(adapter, [5, 6, 7], 8))


class NextPositionNet(nn.Module):
    """Dream-style logits: position i scores token i+1, and prefers token id (i + 1) % vocab."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.config = type("Cfg", (), {"mask_token_id": vocab - 1, "eos_token_id": 2, "max_position_embeddings": 64})()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        b, s = input_ids.shape
        logits = torch.zeros(b, s, self.vocab)
        logits[:, torch.arange(s), (torch.arange(s) + 1) % self.vocab] = 10.0
        return logits


def test_dream_shift_is_applied():
    adapter = wrap_dream(NextPositionNet(50), IdTokenizer())
    assert adapter.shift_logits and adapter.mask_token_id == 49
    prompt = [10, 11, 12]
    chunks = list(build_engine(adapter).generate(
        GenerationRequest(prompt, SamplingParams(max_tokens=5), DiffusionOptions(ultra_fast=False))))
    # after the shift, absolute position p receives token p % vocab: 3, 4, 5, 6, 7
    assert text_of(chunks) == "t3 t4 t5 t6 t7 "


def test_dream_style_transformers_network_runs_through_adapter():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    cfg.mask_token_id = 299
    torch.manual_seed(0)
    adapter = wrap_dream(Qwen2ForCausalLM(cfg).eval(), IdTokenizer())
    options = DiffusionOptions(ultra_fast=False, steps=6, block_length=6)
    chunks = list(build_engine(adapter).generate(GenerationRequest([4, 5], SamplingParams(max_tokens=6), options)))
    assert chunks[-1].is_final
    assert text_of(chunks) == IdTokenizer().decode(reference_answer(adapter, [4, 5], 6))


def reference_answer(adapter, prompt: list[int], gen_len: int) -> list[int]:
    """LLaDA's greedy low-confidence remasking, one token per step over one block, on the adapter's
    aligned logits (the mask token is never a candidate), cut at the first EOS."""
    x = torch.tensor([prompt + [adapter.mask_token_id] * gen_len])
    for _ in range(gen_len):
        logits = adapter.logits(x)[0, len(prompt):]
        logits[:, adapter.mask_token_id] = -torch.inf
        probs = logits.softmax(-1)
        confidence, token = probs.max(-1)
        masked = x[0, len(prompt):] == adapter.mask_token_id
        pick = int(torch.where(masked, confidence, torch.tensor(-1.0)).argmax())
        x[0, len(prompt) + pick] = token[pick]
    answer = x[0, len(prompt):].tolist()
    return answer[: next((i for i, t in enumerate(answer) if t in adapter.eos_token_ids), len(answer))]
