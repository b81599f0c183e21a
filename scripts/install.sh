#!/usr/bin/env bash
# Install stepvar with the right torch build for this machine, then the package itself.
#
# A bare `torch` requirement on a machine without torch pulls the multi-GB CUDA build,
# so torch is installed first, explicitly:
#   - a machine with an NVIDIA driver (nvidia-smi works) gets the default (CUDA) wheel;
#   - any other machine gets $STEPVAR_TORCH_CPU_SPEC (default torch==2.13.0, which on
#     this project's CPU machines resolves to the CPU build kept in the local wheel cache;
#     elsewhere set PIP_INDEX_URL / PIP_EXTRA_INDEX_URL to your CPU wheel index).
# The package's own `torch>=2.1` requirement is then already satisfied and pulls nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:-dev}

have_torch() { "$PY" -c "import torch" >/dev/null 2>&1; }

if have_torch; then
  echo "install: torch $("$PY" -c 'import torch; print(torch.__version__)') already present"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "install: NVIDIA GPU found, installing the CUDA build of torch"
  "$PY" -m pip install -q "${STEPVAR_TORCH_CUDA_SPEC:-torch}"
else
  echo "install: no GPU, installing the CPU build of torch (${STEPVAR_TORCH_CPU_SPEC:-torch==2.13.0})"
  "$PY" -m pip install -q "${STEPVAR_TORCH_CPU_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -e ".[${extras}]"
echo "install: done ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
