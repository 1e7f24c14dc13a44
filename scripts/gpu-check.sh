#!/usr/bin/env bash
# `make gpu-check`: install, then check the GPU path (python -m clipdehaze.gpu_check; its docstring says what runs).
#
# On a fresh GPU machine with only this checkout: makes .venv on top of the machine's own CUDA PyTorch when a python
# there has one (--system-site-packages: no 2.5 GB download, and the torch that matches the driver), else a plain
# venv, and installs the project with its dev extra from the package registry, or, without network, from ./wheels
# when that folder exists (pip download the missing wheels into it elsewhere). An environment that already imports
# this checkout's package with its dependencies is used as it is. Without a CUDA GPU only the CPU part runs and the
# script exits 0 after it.
#
# Environment: GPU_CHECK_PYTHON (use this interpreter, no venv), VENV (default .venv), GPU_CHECK_OUT (default
# outputs/gpu-check), PYTHON (base interpreter when no CUDA PyTorch is found). Arguments go to clipdehaze.gpu_check.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1; }
ready() {
    "$1" - <<'PY' >/dev/null 2>&1
import pathlib, sys
import clipdehaze, clipdehaze.train, kornia, open_clip, pytest  # noqa: F401 - what the check imports
sys.exit(0 if pathlib.Path(clipdehaze.__file__).resolve().is_relative_to(pathlib.Path("src").resolve()) else 1)
PY
}

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON
else
    if [ ! -x "$VENV/bin/python" ]; then
        base=""
        for candidate in python3 python3.12 python3.11 python; do
            if command -v "$candidate" >/dev/null && cuda_torch "$candidate"; then base=$candidate; break; fi
        done
        if [ -n "$base" ]; then
            echo "gpu-check: $VENV on top of $(command -v "$base")'s CUDA PyTorch"
            "$base" -m venv --system-site-packages "$VENV"
        else
            "${PYTHON:-python3}" -m venv "$VENV"
        fi
    fi
    PY=$VENV/bin/python
fi

if ! ready "$PY"; then
    echo "gpu-check: installing this checkout into $("$PY" -c 'import sys; print(sys.prefix)')"
    if [ -d wheels ]; then
        "$PY" -m pip install --quiet --no-index --find-links wheels -e ".[dev]"
    else
        "$PY" -m pip install --quiet --upgrade pip
        "$PY" -m pip install --quiet -e ".[dev]"
    fi
    if [ "$PY" = "$VENV/bin/python" ]; then touch "$VENV/.installed"; fi  # the Makefile's install stamp
fi

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline}
exec "$PY" -m clipdehaze.gpu_check --out "${GPU_CHECK_OUT:-outputs/gpu-check}" "$@"
