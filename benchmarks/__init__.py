"""Benchmarks for dfast_serve: a small harness and drivers grouped by what they measure.

* ``harness/``: HTTP client, SSE parsing, metrics, results (``finish``), prompts, servers and peers, plots;
* ``serving/``: through the server (Ray Serve + HTTP) or the replica's step loop: TTFT, waterfall, fairness…;
* ``engine/``: in-process engine figures: TTFT vs floor, decoding strategies, native dLLM code, bf16…;
* ``peers/``: against other servers (vLLM, dlmserve) and vLLM's own benchmark client;
* ``gpu.py``: the in-process experiments on one CUDA GPU at real model sizes.

Run a driver from the repository root as a module, e.g. ``python -m benchmarks.serving.load --help``.
Each run's results go to ``benchmarks/results/<date>-<machine>-<commit>/``; docs/performance.md holds the
current figures.
"""
