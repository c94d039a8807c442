"""Command line: stream a generation from an embedded (or any configured) model, without Ray.

    python -m dfast_serve.generate --engine diffusion --prompt "Recite Genesis 1:1." --chat --stream
    python -m dfast_serve.generate --engine ar --prompt "Why is the sky blue?" --chat --max-tokens 64 --stream
"""

from __future__ import annotations

import argparse
import json
import sys

from dfast_serve.config import ModelConfig, resolve_diffusion_options
from dfast_serve.engine import GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.registry import load_model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["diffusion", "ar"], default="diffusion")
    ap.add_argument("--source", choices=["embedded", "llada", "dream", "llada-remote", "dream-remote", "diffusion_gemma", "hf"],
                    default="embedded")
    ap.add_argument("--path", help="checkpoint directory or hub id (every source but embedded)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop", action="append", default=[])
    ap.add_argument("--steps", type=int, help="diffusion denoising steps (default: one per token)")
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--no-ultra-fast", action="store_true", help="standard diffusion schedule")
    ap.add_argument("--stream", action="store_true", help="print chunks as they arrive")
    ap.add_argument("--json", action="store_true", help="print every chunk as a JSON line")
    args = ap.parse_args(argv)

    config = ModelConfig(name=f"{args.engine}-cli", engine=args.engine, source=args.source, path=args.path)
    model = load_model(**config.model_dump())
    request_options = {"block_length": args.block_length, "ultra_fast": not args.no_ultra_fast}
    if args.steps:
        request_options["steps"] = args.steps
    options = resolve_diffusion_options(request=request_options)
    engine = build_engine(model)
    prompt_ids = model.encode_chat([{"role": "user", "content": args.prompt}]) if args.chat else model.encode_prompt(args.prompt)
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed, stop=args.stop,
    )
    final, text = None, ""
    for chunk in engine.generate(GenerationRequest(prompt_ids, params, options if args.engine == "diffusion" else None)):
        final, text = chunk, text + chunk.new_text
        if args.json:
            print(json.dumps(chunk.to_dict()), flush=True)
        elif args.stream:
            sys.stdout.write(chunk.new_text)
            sys.stdout.flush()
    if final is not None and not args.json:
        if not args.stream:
            sys.stdout.write(text)
        print(f"\n[{final.finish_reason}; {final.total_tokens} tokens; {final.nfe} forward passes; {final.time_ms:.0f} ms]")


if __name__ == "__main__":
    main()
