"""The benchmark experiments on one CUDA GPU, in bf16, at real model size; one folder out.

    python -m benchmarks.gpu --out gpu_results        # a CUDA machine; about 5 minutes on an H200
    python -m benchmarks.gpu --smoke --out /tmp/gpu   # any machine: small shapes, checks the script runs

In-process (no Ray, no HTTP: the server's own overhead is measured by ``benchmarks.experiments``),
with the engine benchmark of ``benchmarks.engine`` on three models:

* ``tiny-mdlm``: the embedded diffusion model (ships in the package);
* ``llada-8b-shaped``: a bidirectional transformer with LLaDA-8B's shape (4096 hidden, 32 layers,
  32 heads, 12288 MLP, 126464 vocab), random weights;
* ``llama-8b-shaped``: an AR ``LlamaForCausalLM`` with Llama-3-8B's shape, random weights.

Random weights make the timings real and the text meaningless: the random models decode with the
embedded tokenizer, their logits cut to its vocabulary after the full-size output layer has run.
Diffusion runs ultra-fast and standard schedules; every model runs at 64 and 256 output tokens.
Writes ``summary.md`` (tables), ``gpu.json`` (all figures), ``runs/*.json``, ``ttft_*.png``,
``reveal_timeline.png``.
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

from benchmarks import engine as engine_bench
from benchmarks.plot import plot_ttft_distributions
from benchmarks.results import markdown_table, save_result
from dfast_serve.models.adapters import CausalLM, DiffusionLM
from dfast_serve.models.embedded import load_tiny_mdlm
from dfast_serve.models.tiny_mdlm import TinyMDLM, TinyMDLMConfig

LLADA_8B = dict(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=12288, vocab_size=126464)
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=14336, vocab_size=128256)
SMOKE_DIFFUSION = dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256, vocab_size=20000)
SMOKE_AR = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=256, vocab_size=20000)


class VocabCut(nn.Module):
    """Runs a full-size diffusion network and keeps the logits of the first ``vocab`` tokens."""

    def __init__(self, network: nn.Module, vocab: int) -> None:
        super().__init__()
        self.network, self.vocab = network, vocab

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.network(input_ids, **kwargs)[..., : self.vocab]


def random_llada(tiny: DiffusionLM, shape: dict[str, int], device: str) -> DiffusionLM:
    """A random-weight bidirectional transformer of the given shape, speaking tiny-mdlm's tokenizer."""
    vocab = len(tiny.tokenizer)
    config = TinyMDLMConfig(mask_token_id=tiny.mask_token_id, eos_token_id=min(tiny.eos_token_ids),
                            max_position_embeddings=4096, **shape)
    network = _built_in_bf16(lambda: TinyMDLM(config), device)
    return DiffusionLM(tokenizer=tiny.tokenizer, network=VocabCut(network, vocab).eval(), name="llada-8b-shaped",
                       kind="tiny-mdlm", mask_token_id=tiny.mask_token_id, eos_token_ids=tiny.eos_token_ids,
                       max_context=4096)


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
    ap.add_argument("--out", default="gpu_results")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 prompts, CPU allowed (checks the script)")
    ap.add_argument("--num-prompts", type=int, help="requests per run (default 10 embedded / 5 random 8B)")
    ap.add_argument("--token-counts", default="64,256")
    ap.add_argument("--skip", default="", help="comma-separated: tiny-mdlm, llada-8b-shaped, llama-8b-shaped")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or add --smoke to check the script")
    out = Path(args.out).resolve()
    token_counts = [int(t) for t in args.token_counts.split(",")]
    if args.smoke:
        token_counts = [min(t, 16) for t in token_counts[:1]]
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()
    dtype = "bfloat16" if device == "cuda" else "float32"
    tiny = load_tiny_mdlm("tiny-mdlm", device=device, dtype=dtype)
    factories: dict[str, tuple[Callable[[], DiffusionLM | CausalLM], int]] = {
        "tiny-mdlm": (lambda: tiny, 10),
        "llada-8b-shaped": (lambda: random_llada(tiny, SMOKE_DIFFUSION if args.smoke else LLADA_8B, device), 5),
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
            if device == "cuda":
                torch.cuda.empty_cache()
    for max_tokens in token_counts:
        plot_ttft_distributions([r for label, r in results.items() if label.endswith(f"-{max_tokens}")],
                                out / f"ttft_{max_tokens}.png")
    env = environment(device)
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} on {env.get('gpu', device)}, "
              f"torch {env['torch']}; {time.time() - started:.0f} s; `python -m benchmarks.gpu "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    table = markdown_table(["model", "schedule", "max_tokens", "TTFT p50 (ms)", "TTFT p99 (ms)", "floor p50 (ms)",
                            "TTFT/floor p50", "total time mean (ms)", "tokens/s", "forward passes / request"], rows)
    (out / "summary.md").write_text(header + "\n" + table)
    figures = {label: {k: v for k, v in r.items() if k not in ("per_request", "generated_texts", "timeline")}
               for label, r in results.items()}
    save_result({"environment": env, "header": header, "figures": figures}, out / "gpu.json")
    print(header + table)
    return results


if __name__ == "__main__":
    main()
