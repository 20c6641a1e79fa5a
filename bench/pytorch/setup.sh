#!/usr/bin/env bash
# Creates bench/pytorch/.venv with a pinned torch for train_ops.py and restorer_nets.py. Idempotent.
# PyPI has no CPU-only torch wheel for x86_64 Linux (those live on a separate index, which we
# do not use), so the default wheel pulls the NVIDIA libraries (~2-3 GB); the benchmark only
# uses the CPU.
set -euo pipefail
TORCH_VERSION=2.15.0
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "setup.sh: $venv already has torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null), nothing to do"
    exit 0
fi
echo "setup.sh: creating $venv"
python3 -m venv "$venv"
echo "setup.sh: installing torch==$TORCH_VERSION from PyPI (a few GB, may take minutes)"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
echo "setup.sh: done, torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
