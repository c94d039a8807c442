"""Drivers that compare dfast_serve with other servers on the same machine, model and prompts: vLLM's CPU
server (``vs_vllm``), dlmserve (``vs_dlmserve``), and vLLM's own ``vllm bench serve`` client against
dfast_serve (``vllm_bench``). Each is skipped (exit 0) when its peer's venv is absent."""
