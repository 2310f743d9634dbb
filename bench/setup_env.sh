#!/usr/bin/env bash
# The benchmark's own environment: the peers we compare against (TRL, Liger-Kernel) live here,
# never in requirements.txt. --system-site-packages reuses the pinned torch and transformers;
# --no-deps keeps pip from replacing them (and from pulling Triton: Liger's chunked losses are
# pure PyTorch and run on CPU). TRL then needs accelerate and psutil, which do not touch torch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install --quiet --no-deps trl liger-kernel accelerate psutil
"$venv/bin/python" -c "import torch, trl, liger_kernel; print('bench env ready: torch', torch.__version__, 'trl', trl.__version__)"
echo "run: $venv/bin/python bench/kd_step.py"
