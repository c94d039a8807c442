"""The benchmark experiments on one CUDA GPU, in bf16, at real model size; one folder out.

    python -m benchmarks.gpu                   # a CUDA machine; about 5 minutes on an H200 (not yet run)
    python -m benchmarks.gpu --quick           # about 2 minutes: the headline cells only
    python -m benchmarks.gpu --smoke --out /tmp/gpu     # any machine: small shapes, checks the script runs

In-process (no Ray, no HTTP: the server's own overhead is measured by ``benchmarks.serving.experiments``),
on four models:

* ``tiny-mdlm``: the embedded diffusion model (ships in the package), engine benchmark
  (``benchmarks.engine.ttft``: ultra-fast and standard schedules at 64 and 256 tokens);
* ``llama-8b-shaped``: an AR ``LlamaForCausalLM`` with Llama-3-8B's shape, random weights, engine benchmark;
* ``llada-8b-shaped``: the native LLaDA code (``models/bidirectional.py``, what ``source: llada``
  loads) at LLaDA-8B's shape (4096 hidden, 32 layers, 32 heads, 12288 MLP, 126464 vocab), random weights;
* ``dream-7b-shaped``: the native Dream code at Dream-7B's shape (3584 hidden, 28 layers, 28 query /
  4 key-value heads, 18944 MLP, 152064 vocab, q/k/v biases, shifted logits), random weights;

the two native models through the grid of ``benchmarks.engine.native_grid`` (decoding x KV cache x
concurrency 1/8/32 x batch invariance on/off; ``--quick``: its four headline cells at 128 tokens);
and ``diffusiongemma-26b-shaped``: transformers' ``DiffusionGemmaForBlockDiffusion`` at Gemma-4-26B-A4B's
text shape (2816 hidden, 30 layers, 128 experts top-8 of 704, 262144 vocab; from the GGUF metadata
of gemma-4-26B-A4B: check it against the DiffusionGemma checkpoint's own config.json), canvas 256,
48 denoising steps, random weights, through ``benchmarks.engine.diffusion_gemma`` (ours, standard and
ultra-fast, against transformers' ``generate`` + streamer: time and passes to the first text and the
first draft); then, served, ``benchmarks.peers.vllm_engine --device cuda``: SmolLM2 on engine: vllm against
bare ``vllm serve`` and engine: ar on the same GPU, with ``vllm bench serve`` (needs ``scripts/setup_vllm.sh``). Its construction builds the encoder's and decoder's copies of the shared layers before
tying them: about 2 x 52 GB at peak, which an H200 holds and an 80 GB card does not.

Random weights make the timings real and the text meaningless: the random models decode with the
embedded tokenizer, their logits cut to its vocabulary after the full-size output layer has run,
and their output layer scaled so that threshold decoding commits about 2 tokens per pass (see
``benchmarks.engine.native_dllm``). Writes into ``--out`` (default: this run's results folder) ``summary.md``
(tables), ``gpu.json`` (all figures),
``runs/*.json``, ``ttft_*.png``, ``reveal_timeline.png``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.engine import diffusion_gemma as gemma_bench
from benchmarks.engine import ttft as engine_bench
from benchmarks.engine.native_grid import FULL_GRID, HEADER as GRID_HEADER, QUICK_GRID, run_grid
from benchmarks.harness.plots import plot_ttft_distributions
from benchmarks.harness.results import finish, markdown_table, run_dir, save_result
from dfast_serve.models.adapters import CausalLM, DiffusionLM
from dfast_serve.models.bidirectional import BidirectionalConfig, BidirectionalLM
from dfast_serve.models.diffusion_gemma import DiffusionGemmaLM, GemmaSampling
from dfast_serve.models.embedded import load_tiny_mdlm
from tests.gemma import EOS_ID, generation_config, tiny_config, write_tokenizer

LLADA_8B = dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, intermediate_size=12288,
                vocab_size=126464, rope_theta=500000.0, norm_eps=1e-5)
DREAM_7B = dict(hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, intermediate_size=18944,
                vocab_size=152064, rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True)
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=14336, vocab_size=128256)
SMOKE_DIFFUSION = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256,
                       vocab_size=20000, rope_theta=500000.0, norm_eps=1e-5)
SMOKE_DREAM = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
                   vocab_size=20000, rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True)
DIFFUSIONGEMMA_26B = dict(vocab_size=262144, hidden_size=2816, intermediate_size=2112, num_hidden_layers=30,
                          num_attention_heads=16, num_key_value_heads=8, head_dim=256, global_head_dim=512,
                          num_global_key_value_heads=2, num_experts=128, top_k_experts=8, moe_intermediate_size=704,
                          sliding_window=1024, layer_types=None, max_position_embeddings=262144)
SMOKE_GEMMA = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=32, global_head_dim=32, num_experts=4, top_k_experts=2,
                   moe_intermediate_size=32, sliding_window=16, layer_types=["sliding_attention", "full_attention"])
LOGIT_SCALE = 12.0  # output layer std x sqrt(hidden), as benchmarks.engine.native_dllm
SMOKE_AR = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=256, vocab_size=20000)


class VocabCut(nn.Module):
    """Runs a full-size diffusion network and keeps the logits of the first ``vocab`` tokens."""

    def __init__(self, network: nn.Module, vocab: int) -> None:
        super().__init__()
        self.network, self.vocab = network, vocab

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, Any]:
        out = self.network(input_ids, **kwargs)
        if isinstance(out, tuple):  # (logits, keys/values): the KV-cache call
            return out[0][..., : self.vocab], out[1]
        return out[..., : self.vocab]


def random_native(tiny: DiffusionLM, shape: dict[str, Any], device: str, family: str = "llada") -> DiffusionLM:
    """The native LLaDA (or Dream) network at the given shape with random weights, speaking
    tiny-mdlm's tokenizer: padded batches and the KV cache on, as ``source: llada`` / ``dream`` load it."""
    vocab = len(tiny.tokenizer)
    network = _built_in_bf16(lambda: BidirectionalLM(BidirectionalConfig(**shape)), device)
    with torch.no_grad():
        network.lm_head.weight.normal_(0.0, LOGIT_SCALE / shape["hidden_size"] ** 0.5)
    name = "llada-8b-shaped" if family == "llada" else "dream-7b-shaped"
    return DiffusionLM(tokenizer=tiny.tokenizer, network=VocabCut(network, vocab).eval(), name=name, kind=family,
                       mask_token_id=tiny.mask_token_id, eos_token_ids=tiny.eos_token_ids,
                       shift_logits=family == "dream", max_context=4096, padded_batches=True, kv_cache=True,
                       trims_logits=True)


def random_llada(tiny: DiffusionLM, shape: dict[str, Any], device: str) -> DiffusionLM:
    return random_native(tiny, shape, device, "llada")


def random_dream(tiny: DiffusionLM, shape: dict[str, Any], device: str) -> DiffusionLM:
    return random_native(tiny, shape, device, "dream")


def random_diffusion_gemma(shape: dict[str, Any], device: str, canvas_length: int, steps: int,
                           scratch: Path) -> DiffusionGemmaLM:
    """DiffusionGemma at the given text shape with random weights, in bf16, and a word-level tokenizer
    over its whole vocabulary (so that every sampled id decodes)."""
    from transformers import DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

    network = _built_in_bf16(lambda: DiffusionGemmaForBlockDiffusion(tiny_config(canvas_length, **shape)), device).eval()
    network.generation_config = generation_config(steps)
    scratch.mkdir(parents=True, exist_ok=True)
    write_tokenizer(scratch, shape["vocab_size"])
    return DiffusionGemmaLM(tokenizer=PreTrainedTokenizerFast.from_pretrained(str(scratch)), network=network,
                            name="diffusiongemma-26b-shaped", eos_token_ids=frozenset({EOS_ID}),
                            canvas_length=canvas_length, vocab_size=shape["vocab_size"], max_context=8192,
                            sampling=GemmaSampling(max_denoising_steps=steps))


def random_llama(tiny: DiffusionLM, shape: dict[str, int], device: str) -> CausalLM:
    """A random-weight LlamaForCausalLM of the given shape; a hook cuts its logits to the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tiny.tokenizer)
    config = LlamaConfig(max_position_embeddings=4096, eos_token_id=min(tiny.eos_token_ids), **shape)
    network = _built_in_bf16(lambda: LlamaForCausalLM(config), device).eval()
    network.lm_head.register_forward_hook(lambda module, inputs, output: output[..., :vocab])
    return CausalLM(tokenizer=tiny.tokenizer, network=network, name="llama-8b-shaped",
                    eos_token_ids=tiny.eos_token_ids, max_context=4096)


def _built_in_bf16(build: Callable[[], nn.Module], device: str) -> nn.Module:
    """Construct straight on the device in bf16 (an 8B model in fp32 first would double the memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return build()
    finally:
        torch.set_default_dtype(previous)


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "device": device,
                            "host": platform.node()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for the results (default: this run's benchmarks/results/ folder)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 prompts, CPU allowed (checks the script)")
    ap.add_argument("--quick", action="store_true", help="about 2 minutes: tiny-mdlm at 64 tokens and the grid's "
                    "headline cells at 128 tokens (no AR model)")
    ap.add_argument("--num-prompts", type=int, help="requests per run (default 10 embedded / 5 random 8B)")
    ap.add_argument("--token-counts", default="64,256")
    ap.add_argument("--grid-tokens", type=int, help="max_tokens of the native grid (default 256, --quick 128)")
    ap.add_argument("--skip", default="",
                    help="comma-separated: tiny-mdlm, llama-8b-shaped, llada-8b-shaped, dream-7b-shaped, "
                    "diffusiongemma-26b-shaped, vllm-engine")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or add --smoke to check the script")
    out = Path(args.out or run_dir()).resolve()
    token_counts = [int(t) for t in args.token_counts.split(",")]
    if args.quick:
        token_counts = token_counts[:1]
    if args.smoke:
        token_counts = [min(t, 16) for t in token_counts[:1]]
    grid_tokens = 8 if args.smoke else (args.grid_tokens or (128 if args.quick else 256))
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        skip.add("llama-8b-shaped")
    started = time.time()
    dtype = "bfloat16" if device == "cuda" else "float32"
    tiny = load_tiny_mdlm("tiny-mdlm", device=device, dtype=dtype)
    factories: dict[str, tuple[Callable[[], DiffusionLM | CausalLM], int]] = {
        "tiny-mdlm": (lambda: tiny, 10),
        "llama-8b-shaped": (lambda: random_llama(tiny, SMOKE_AR if args.smoke else LLAMA3_8B, device), 5),
    }
    results: dict[str, dict[str, Any]] = {}
    rows: list[list[Any]] = []
    for name, (factory, default_prompts) in factories.items():
        if name in skip:
            continue
        model = factory()
        num_prompts = 2 if args.smoke else (args.num_prompts or default_prompts)
        modes = ("ultra", "standard") if isinstance(model, DiffusionLM) else ("ultra",)
        for max_tokens in token_counts:
            for mode in modes:
                label = f"{name}-{mode if isinstance(model, DiffusionLM) else 'stream'}-{max_tokens}"
                bench_args = ["--mode", mode, "--max-tokens", str(max_tokens), "--num-prompts", str(num_prompts),
                              "--no-chat", "--label", label, "--save-result", str(out / "runs" / f"{label}.json")]
                if name == "tiny-mdlm" and mode == "ultra" and max_tokens == token_counts[0]:
                    bench_args += ["--timeline", str(out / "reveal_timeline.png")]
                print(f"-- {label}", flush=True)
                r = engine_bench.bench(model, engine_bench.parse_args(bench_args))
                results[label] = r
                rows.append([name, mode if isinstance(model, DiffusionLM) else "stream", max_tokens,
                             r.get("median_ttft_ms"), r.get("p99_ttft_ms"), r.get("median_floor_ms"),
                             r.get("median_ttft_over_floor"), r.get("mean_e2el_ms"), r.get("output_throughput"),
                             r.get("mean_nfe_total")])
        if name != "tiny-mdlm":
            del model
            _free(device)
    for max_tokens in token_counts:
        plot_ttft_distributions([r for label, r in results.items() if label.endswith(f"-{max_tokens}")],
                                out / f"ttft_{max_tokens}.png")

    grid = QUICK_GRID if args.quick else FULL_GRID
    native: dict[str, Callable[[], DiffusionLM]] = {
        "llada-8b-shaped": lambda: random_llada(tiny, SMOKE_DIFFUSION if args.smoke else LLADA_8B, device),
        "dream-7b-shaped": lambda: random_dream(tiny, SMOKE_DREAM if args.smoke else DREAM_7B, device),
    }
    grid_figures: dict[str, dict[str, Any]] = {}
    grid_rows: list[list[Any]] = []
    for name, build in native.items():
        if name in skip:
            continue
        model = build()
        figures, model_rows = run_grid(model, grid, grid_tokens, block_length=32 if not args.smoke else 4,
                                       single_prompts=1 if args.smoke or args.quick else 2,
                                       max_concurrency=2 if args.smoke else None)
        grid_figures.update(figures)
        grid_rows += model_rows
        save_result(figures, out / "runs" / f"grid-{name}.json")
        del model
        _free(device)

    gemma_figures: dict[str, dict[str, Any]] = {}
    gemma_rows: list[list[Any]] = []
    gemma_note = ""
    if "diffusiongemma-26b-shaped" not in skip:
        canvas, steps, answer = (8, 3, 16) if args.smoke else (256, 48, 256 if args.quick else 512)
        model = random_diffusion_gemma(SMOKE_GEMMA if args.smoke else DIFFUSIONGEMMA_26B, device, canvas, steps,
                                       out / "diffusiongemma-tokenizer")
        seeds = list(range(1 if args.smoke else 2 if args.quick else 3))
        runs = gemma_bench.compare(model, model.encode_prompt(gemma_bench.PROMPT), answer, seeds)
        for variant, variant_runs in runs.items():
            summary = gemma_bench.summarize(variant_runs)
            gemma_figures[f"diffusiongemma-26b-shaped-{variant}"] = summary
            gemma_rows.append(gemma_bench.table_row(variant, summary))
        gemma_note = (f"\nDiffusionGemma, Gemma-4-26B-A4B text shape, random weights, canvas {canvas}, {steps} steps, "
                      f"{answer} tokens, medians of {len(seeds)} seeds:\n\n" + markdown_table(gemma_bench.HEADER, gemma_rows))
        del model
        _free(device)

    vllm_note = ""
    if "vllm-engine" not in skip and device == "cuda":
        # engine: vllm against bare vLLM and engine: ar, served, with vLLM's client (benchmarks.peers.vllm_engine).
        from benchmarks.peers import vllm_engine

        served = vllm_engine.main(["--device", "cuda", "--no-eager", "--concurrency", "1,8" if args.quick else "1,8,32",
                                   "--max-seqs", "32", "--result-dir", str(out)])
        vllm_note = "\nServed AR: engine: vllm vs bare vLLM vs engine: ar:\n\n" + (served or {}).get("table", "not run")

    env = environment(device)
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} on {env.get('gpu', device)}, "
              f"torch {env['torch']}; {time.time() - started:.0f} s\n")
    table = markdown_table(["model", "schedule", "max_tokens", "TTFT p50 (ms)", "TTFT p99 (ms)", "floor p50 (ms)",
                            "TTFT/floor p50", "total time mean (ms)", "tokens/s", "forward passes / request"], rows)
    grid_table = markdown_table(GRID_HEADER, grid_rows) if grid_rows else ""
    grid_note = f"\nNative dLLM grid, {grid_tokens} tokens per answer:\n\n" + grid_table if grid_rows else ""
    (out / "summary.md").write_text(header + "\n" + table + grid_note + gemma_note + vllm_note)
    raw = ("per_request", "generated_texts", "timeline", "table")
    figures = {label: {k: v for k, v in r.items() if k not in raw} for label, r in results.items()}
    finish({"environment": env, "header": header, "figures": figures, "grid": grid_figures,
            "diffusion_gemma": gemma_figures}, "gpu", args, table=header + table + grid_note + gemma_note + vllm_note,
           out=out)
    return {**results, **grid_figures, **gemma_figures}


def _free(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
