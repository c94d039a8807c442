"""Drivers that measure the engine in-process (no Ray, no HTTP): TTFT against the forward-pass floor
(``ttft``), decoding strategies and the KV cache (``decoding``), native LLaDA code vs the remote-code
path (``native_dllm``; ``native_grid`` is its GPU grid), bf16 batch agreement (``bf16_agreement``), the
draft stream (``draft``), DiffusionGemma against transformers (``diffusion_gemma``) and AR on a CPU
(``ar_cpu``)."""
