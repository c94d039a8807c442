"""A tiny random masked-diffusion model for fast engine tests (tiny-mdlm's architecture, 2 layers, a
24-token vocabulary: milliseconds a pass), and plain reference decoders to check the engine against."""

from __future__ import annotations

import torch

from dfast_serve.models.adapters import DiffusionLM
from dfast_serve.models.bidirectional import BidirectionalConfig, BidirectionalLM
from tests.engine.byte_tokenizer import ByteTokenizer

VOCAB = 24
MASK = VOCAB - 1
EOS = 0
PIECES = [bytes([ord("a") + i]) for i in range(VOCAB - 2)] + [b"<mask>"]  # ids 1..22 "a".."v", 23 the mask


def tiny_masked(seed: int = 2, *, padded_batches: bool = True, kv_cache: bool = True, trims_logits: bool = True,
                eos_logit: float = 0.0, max_context: int = 96) -> DiffusionLM:
    """Logits spread far apart (the output layer scaled up), EOS's fixed at ``eos_logit``, so that greedy
    choices and confidence ranks never hinge on rounding; a short RoPE period and strong values, so that
    the answer varies with the position and the prompt (a plain random model says one token everywhere)."""
    cfg = BidirectionalConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
                              intermediate_size=64, rope_theta=10.0, norm_eps=1e-6)
    torch.manual_seed(seed)
    network = BidirectionalLM(cfg).eval()
    with torch.no_grad():
        network.lm_head.weight.mul_(8)
        network.lm_head.weight[EOS] = 0
        for layer in network.layers:
            layer.v_proj.weight.mul_(4)
    if eos_logit:
        network.lm_head.bias = torch.nn.Parameter(torch.zeros(VOCAB))
        with torch.no_grad():
            network.lm_head.bias[EOS] = eos_logit
    return DiffusionLM(tokenizer=ByteTokenizer(PIECES), network=network, mask_token_id=MASK,
                       eos_token_ids=frozenset({EOS}), max_context=max_context, padded_batches=padded_batches,
                       kv_cache=kv_cache, trims_logits=trims_logits)


@torch.no_grad()
def low_confidence_reference(model: DiffusionLM, prompt: list[int], gen_len: int, block: int) -> list[int]:
    """Plain LLaDA decoding, greedy: blocks of ``block`` answer positions left to right; each pass runs the
    whole canvas and decides the one masked position of the block whose greedy token is most probable (the
    mask token never a candidate)."""
    x = torch.tensor([list(prompt) + [MASK] * gen_len])
    n = len(prompt)
    for start in range(0, gen_len, block):
        end = min(start + block, gen_len)
        for _ in range(end - start):
            logits = model.network(x)[0, n:].float()
            logits[:, MASK] = -torch.inf
            probs = logits.softmax(-1)
            confidence, token = probs.max(-1)
            masked = [i for i in range(start, end) if int(x[0, n + i]) == MASK]
            pick = max(masked, key=lambda i: float(confidence[i]))
            x[0, n + pick] = token[pick]
    return x[0, n:].tolist()


def up_to_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS)] if EOS in ids else ids
