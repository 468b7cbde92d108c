#!/bin/sh
# Run after `pip install -e '.[vllm]'`: vllm==0.32.0 from the package registry pulls torchvision,
# torchaudio and torchcodec wheels that fail to import beside the CPU build of torch 2.13.0 that
# pip resolves on machines without a GPU ("operator torchvision::nms does not exist"), and
# transformers imports torchvision whenever it is installed, so vLLM itself then fails to import.
# vLLM's text-only paths need none of them: each one that cannot be imported is removed (on a
# machine where they match torch they import fine and stay). Ends by importing vLLM's scheduler.
# Usage: sh scripts/fix-vllm-install.sh [VENV]   (default .venv)
set -eu
VENV="${1:-.venv}"
PY="$VENV/bin/python"
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)"; then
        if ! "$PY" -c "import $pkg" >/dev/null 2>&1; then
            echo "fix-vllm-install: removing $pkg (does not import beside this torch)"
            "$PY" -m pip uninstall -q -y "$pkg"
        fi
    fi
done
"$PY" -c "import vllm; from vllm.v1.core.sched.scheduler import Scheduler; print('vllm', vllm.__version__, 'imports')"
