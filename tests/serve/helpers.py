"""Shared by the real-Ray tests: the served models' names, prompts, a slow request, an idle wait."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dfast_serve.config.vllm import VLLM_SETUP, VLLMOptions
from tests.serve.conftest import replica_stats

DIFFUSION, AR = "tiny-mdlm", "smollm2-135m"
PROMPT = "In the beginning God created"
MESSAGES = [{"role": "user", "content": "Recite Genesis 1:1."}]
# 256 forward passes, each at least 50 ms on the small app's paced replica (12.8 s, past its 4 s request
# timeout on any host); the first chunk leaves after one.
SLOW_DFAST = {"ultra_fast_config": {"min_steps": 256, "max_steps": 256, "enable_early_stop": False,
                                    "stream_confidence_threshold": 1.0, "stream_every_n_tokens": 0}}
# A generation of 256 passes that EOS cannot cut short (a sampled EOS once ended one in 0.4 s in CI).
SLOW_FIELDS = {"max_tokens": 256, "ignore_eos": True, "dfast": SLOW_DFAST}


def replica_idle(deployment: str, app_name: str = "dfast_serve", deadline_s: float = 120) -> dict:
    """Poll a replica until no request is in flight or in its step loop; its stats then."""
    deadline = time.monotonic() + deadline_s
    while True:
        stats = replica_stats(deployment, app_name)
        if stats["in_flight"] == 0 and stats["active"] == 0 and stats["waiting"] == 0:
            return stats
        assert time.monotonic() < deadline, f"the replica never became idle: {stats}"
        time.sleep(0.05)


VLLM_PYTHON = VLLMOptions().interpreter()  # the vLLM environment engine: vllm replicas run in


def require_vllm_environment() -> None:
    """Skip (fail under ``CI=1``: ``.ci/run`` builds it) when the vLLM environment is missing."""
    if Path(VLLM_PYTHON).exists():
        return
    message = f"the vLLM environment {VLLM_PYTHON} is missing: run {VLLM_SETUP} to test engine: vllm"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
