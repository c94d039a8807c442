"""Native LLaDA code vs the remote-code-style path, on CPU, in-process, side by side in one run.

    python -m benchmarks.engine.native_dllm --rounds 1          # ~1 min idle on one CPU thread, ~20 min loaded

The model is a random-weight checkpoint in LLaDA's own layout (config.json + safetensors under
``model.transformer``, written to a temporary directory, loaded by ``source: llada``) with the embedded
tiny-mdlm tokenizer (its 8192-token vocabulary), by default 128 hidden, 2 layers. Two paths over the same
weights:

* ``native``: what ``source: llada`` gives: padded batches (canvases of any length share a pass)
  and the block KV cache;
* ``remote-style``: the same adapter with ``padded_batches``, ``kv_cache`` and ``trims_logits`` off,
  which is what the engine makes of LLaDA's remote code (``source: llada-remote``): no cache, only
  canvases of equal length share a pass, and every position's logits are computed.

Experiments:

* ``concurrent``: 16 requests at once, prompts of 16 to 200 tokens (all lengths different),
  ``max_tokens`` 256, threshold decoding, dual cache requested; every step is one ``engine.step``
  over the live requests, as the server's step loop runs it. Tokens/s over the whole batch, TTFT
  (first streamed chunk) per request, and the first step (every request's first forward pass: one
  padded pass natively, one pass per request on the remote-style path).
* ``single``: one request at a time (batch 1), 256 tokens, threshold decoding, the native path with
  the dual cache vs uncached (the uncached run is also what the remote-style path does at batch 1):
  end-to-end time, TTFT, the first step (a full pass either way) and how often the cached answer
  equals the uncached one (the cache is approximate past the first layer; where it diverges first).

Random weights make timings real and text meaningless; EOS is ignored so every answer runs its full
``max_tokens`` (an early random EOS would make the work differ between paths). The two variants of
each experiment alternate round by round, so that load on the shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import add_save_result, finish, markdown_table
from dfast_serve.config import BatchInvariance, DiffusionOptions, ReplicaConfig
from dfast_serve.engine import GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.adapters import DiffusionLM
from dfast_serve.models.bidirectional import BidirectionalConfig, BidirectionalLM
from dfast_serve.models.embedded import TINY_MDLM_DIR
from dfast_serve.models.registry import load_model

# native parameter name -> LLaDA checkpoint key (the inverse of models/llada.py's RENAMES)
_LLADA_TOP = {"embed.weight": "model.transformer.wte.weight", "norm.weight": "model.transformer.ln_f.weight",
              "lm_head.weight": "model.transformer.ff_out.weight"}
_LLADA_LAYER = {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
                "o_proj": "attn_out", "mlp_norm": "ff_norm", "gate_proj": "ff_proj", "up_proj": "up_proj",
                "down_proj": "ff_out"}


def llada_key(name: str) -> str:
    if name in _LLADA_TOP:
        return _LLADA_TOP[name]
    _, index, module, kind = name.split(".")
    return f"model.transformer.blocks.{index}.{_LLADA_LAYER[module]}.{kind}"


def write_llada_checkpoint(directory: Path, hidden: int, layers: int, heads: int, mlp: int, logit_scale: float = 12.0,
                           seed: int = 0, vocab_size: int | None = None, mask_token_id: int | None = None) -> Path:
    """A random-weight LLaDA-layout checkpoint speaking the tiny-mdlm tokenizer (its vocabulary, mask, EOS).

    ``vocab_size`` larger than the tokenizer's (LLaDA's own is 126464) widens the embedding and the head
    as the real checkpoint's are; the head rows of ids the tokenizer lacks are zero, so they never win
    over the random logits of real tokens. ``mask_token_id`` replaces the tokenizer's mask in config.json."""
    from safetensors.torch import save_file

    tiny = json.loads((TINY_MDLM_DIR / "config.json").read_text())
    known = int(tiny["vocab_size"])
    vocab = vocab_size or known
    cfg = BidirectionalConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                              num_kv_heads=heads, intermediate_size=mlp, rope_theta=500000.0, norm_eps=1e-5)
    torch.manual_seed(seed)
    network = BidirectionalLM(cfg)
    weights = {}
    for name, param in network.state_dict().items():
        if "norm" in name:
            value = torch.ones_like(param)
        elif name == "embed.weight":
            value = torch.randn_like(param)
        else:  # the head's scale sets how peaked the random predictions are (see --logit-scale)
            value = torch.randn_like(param) * (logit_scale if name == "lm_head.weight" else 1.0) / math.sqrt(param.shape[1])
            if name == "lm_head.weight":
                value[known:] = 0.0
        weights[llada_key(name)] = value.to(torch.bfloat16).contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / "model.safetensors"))
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama",
              "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "alibi": False,
              "d_model": hidden, "n_heads": heads, "n_kv_heads": heads, "n_layers": layers, "mlp_hidden_size": mlp,
              "vocab_size": vocab, "embedding_size": vocab, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
              "weight_tying": False, "include_bias": False, "include_qkv_bias": False,
              "mask_token_id": tiny["mask_token_id"] if mask_token_id is None else mask_token_id,
              "eos_token_id": tiny["eos_token_id"], "max_sequence_length": 4096}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TINY_MDLM_DIR / name, directory / name)
    return directory


def prompt_ids(model: DiffusionLM, lengths: list[int]) -> list[list[int]]:
    """Real text, cut to each length (the prompt corpus repeated as needed)."""
    text = " ".join(get_prompts(50, None))
    ids = model.encode_prompt(text)
    while len(ids) < max(lengths):
        ids = ids + ids
    return [ids[:n] for n in lengths]


def run_batch(model: DiffusionLM, prompts: list[list[int]], options: DiffusionOptions, max_tokens: int,
              max_batch_size: int, batch_invariance: BatchInvariance = "off",
              step_token_budget: int | None = None) -> dict[str, Any]:
    """Every request started at once, then ``engine.step`` over the live ones until all are done."""
    engine = build_engine(model, max_batch_size, step_token_budget, batch_invariance)
    started = time.perf_counter()
    seqs = [engine.start(GenerationRequest(p, SamplingParams(max_tokens=max_tokens), options))
                                     for p in prompts]
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    first_pass = None
    while live := [s for s in seqs if not s.finished]:
        engine.step_sequences(live)
        now = time.perf_counter()
        first_pass = first_pass or now - started
        for i, s in enumerate(seqs):
            if s.drain() and i not in first:
                first[i] = now - started
            if s.finished and i not in done:
                done[i] = now - started
    wall = time.perf_counter() - started
    tokens = sum(s.detokenizer.token_count for s in seqs)
    ttft = [first[i] * 1000 for i in range(len(seqs))]
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "forward_passes": engine.forward_passes,
            "mean_nfe": statistics.mean(s.nfe for s in seqs), "ttft_ms_p50": statistics.median(ttft),
            "ttft_ms_max": max(ttft), "first_pass_ms": first_pass * 1000,
            "e2e_ms_mean": statistics.mean(done.values()) * 1000,
            "answers": [s.answer.tolist() for s in seqs]}


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def alternate(variants: dict[str, Any], rounds: int, run) -> dict[str, list[dict[str, Any]]]:
    """``run(variant)`` ``rounds`` times per variant, the order flipping each round."""
    names = list(variants)
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(run(variants[name]))
            print(f"  round {r + 1} {name}: {out[name][-1]['wall_s']:.1f} s", flush=True)
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds (the answers are the same every round: greedy and deterministic)."""
    keys = [k for k in runs[0] if k != "answers"]
    return {**{k: statistics.median(r[k] for r in runs) for k in keys}, "answers": runs[0]["answers"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=352)
    ap.add_argument("--logit-scale", type=float, default=12.0,
                    help="output layer std x sqrt(hidden): 12 makes threshold decoding (0.9) commit about 2 tokens "
                         "per pass on these random weights, near the ~3 Fast-dLLM reports for LLaDA")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--min-prompt", type=int, default=16)
    ap.add_argument("--max-prompt", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--single-prompts", type=int, default=3, help="requests per variant in the batch-1 experiment")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--step-token-budget", type=int, default=ReplicaConfig().step_token_budget,
                    help="canvas tokens per step in the concurrent experiment (the replica's default; 0: none)")
    add_save_result(ap, "native_dllm")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_llada_checkpoint(Path(tmp) / "llada", args.hidden, args.layers, args.heads, args.mlp,
                                      args.logit_scale)
        loaded = load_model(name="tiny-llada", engine="diffusion", source="llada", path=str(path),
                                        device="cpu", dtype="float32")
    assert isinstance(loaded, DiffusionLM) and loaded.padded_batches and loaded.kv_cache
    native = dataclasses.replace(loaded, eos_token_ids=frozenset())  # every answer runs its full length
    remote_style = dataclasses.replace(native, padded_batches=False, kv_cache=False, trims_logits=False)
    shared = dict(ultra_fast=False, decoding="threshold", threshold=args.threshold, block_length=args.block_length)
    dual, uncached = DiffusionOptions(cache="dual", **shared), DiffusionOptions(cache="none", **shared)
    n = args.requests
    lengths = [round(args.min_prompt + i * (args.max_prompt - args.min_prompt) / max(n - 1, 1)) for i in range(n)]
    order = [lengths[(i * 7) % n] for i in range(n)] if n % 7 else lengths  # mixed arrival order
    prompts = prompt_ids(native, order)

    print(f"concurrent: {n} requests, prompts {min(lengths)}-{max(lengths)} tokens, {args.max_tokens} tokens each")
    concurrent = alternate({"native": native, "remote-style": remote_style}, args.rounds,
                           lambda model: run_batch(model, prompts, dual, args.max_tokens, max_batch_size=n,
                                                                   step_token_budget=args.step_token_budget or None))
    conc = {k: summary(v) for k, v in concurrent.items()}

    single_prompts = prompt_ids(native, [lengths[round(i * (n - 1) / max(args.single_prompts - 1, 1))]
                                         for i in range(args.single_prompts)])
    print(f"single: batch 1, {args.max_tokens} tokens, prompts of {[len(p) for p in single_prompts]} tokens")

    def one_by_one(options: DiffusionOptions) -> dict[str, Any]:
        runs = [run_batch(native, [p], options, args.max_tokens, max_batch_size=1) for p in single_prompts]
        return {"wall_s": sum(r["wall_s"] for r in runs), "e2e_ms_mean": statistics.mean(r["e2e_ms_mean"] for r in runs),
                "ttft_ms_p50": statistics.median(r["ttft_ms_p50"] for r in runs),
                "first_pass_ms": statistics.median(r["first_pass_ms"] for r in runs),
                "mean_nfe": statistics.mean(r["mean_nfe"] for r in runs),
                "tokens_per_s": sum(r["tokens"] for r in runs) / sum(r["wall_s"] for r in runs),
                "answers": [r["answers"][0] for r in runs]}

    single = {k: summary(v) for k, v in alternate({"dual": dual, "uncached": uncached}, args.rounds, one_by_one).items()}
    agree = [a == b for a, b in zip(single["dual"]["answers"], single["uncached"]["answers"])]
    divergence = [first_divergence(a, b) for a, b in zip(single["dual"]["answers"], single["uncached"]["answers"])]

    header = ["experiment", "variant", "tokens/s", "wall (s)", "E2E mean (ms)", "first step (ms)", "TTFT p50 (ms)",
              "TTFT max (ms)", "forward passes", "NFE / request"]
    rows = [["concurrent", name, r["tokens_per_s"], r["wall_s"], r["e2e_ms_mean"], r["first_pass_ms"], r["ttft_ms_p50"],
             r["ttft_ms_max"], r["forward_passes"], r["mean_nfe"]] for name, r in conc.items()]
    rows += [["single", name, r["tokens_per_s"], r["wall_s"], r["e2e_ms_mean"], r["first_pass_ms"], r["ttft_ms_p50"],
              None, None, r["mean_nfe"]] for name, r in single.items()]
    ratios = {
        "concurrent_tokens_per_s_native_over_remote_style": conc["native"]["tokens_per_s"] / conc["remote-style"]["tokens_per_s"],
        "concurrent_ttft_p50_remote_style_over_native": conc["remote-style"]["ttft_ms_p50"] / conc["native"]["ttft_ms_p50"],
        "single_e2e_uncached_over_dual": single["uncached"]["e2e_ms_mean"] / single["dual"]["e2e_ms_mean"],
        "single_ttft_uncached_over_dual": single["uncached"]["ttft_ms_p50"] / single["dual"]["ttft_ms_p50"],
        "single_first_step_uncached_over_dual": single["uncached"]["first_pass_ms"] / single["dual"]["first_pass_ms"],
        "single_dual_answers_equal_uncached": f"{sum(agree)}/{len(agree)}",
        "single_dual_first_divergence_tokens": divergence,
    }
    table = markdown_table(header, rows) + "\n" + markdown_table(["ratio", "value"], [[k, v] for k, v in ratios.items()])
    return finish({"header": header, "rows": rows, "ratios": ratios,
                   "concurrent": {k: {x: y for x, y in v.items() if x != "answers"} for k, v in conc.items()},
                   "single": {k: {x: y for x, y in v.items() if x != "answers"} for k, v in single.items()}},
                  "native_dllm", args, table=table, out=args.save_result)


if __name__ == "__main__":
    main()
