#!/usr/bin/env bash
# Rehearse the GPU run on a CPU machine with the GPU machine's software:
# CPython 3.12, torch 2.11.0+cu130 (PyPI's CUDA build, which runs on the CPU) and the wheels of
# WHEELS_DIR (mmcv 2.1.0 built against that torch, mmdet 3.3.0, mmengine 0.10.7, ...), in a
# virtual environment outside the repo; then `.dev_scripts/gpu_benchmark.sh --dry-run` with that Python and,
# with --tests, the test suite. What differs from the development stack (torch 2.13, Python 3.11:
# APIs, dynamo / inductor behaviour, mmcv's build) shows up here instead of in the one GPU call.
#
#   bash .dev_scripts/rehearse_gpu_run.sh [--tests] WHEELS_DIR     # WHEELS_DIR: the GPU machine's wheels
#
# Environment: VENV (default /tmp/tbx11k_device_venv; ~5.5 GB, torch's CUDA libraries), PY312 (a
# Python 3.12), OUT (the dry run's files, default /tmp/tbx11k_gpu_rehearsal). Needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=0
[[ ${1:-} == --tests ]] && { TESTS=1; shift; }
WHEELS=${1:?usage: rehearse_gpu_run.sh [--tests] WHEELS_DIR (the GPU machine's wheels)}
VENV=${VENV:-/tmp/tbx11k_device_venv}
OUT=${OUT:-/tmp/tbx11k_gpu_rehearsal}
ls "$WHEELS"/mmcv-*cp312*.whl >/dev/null 2>&1 || { echo "no cp312 mmcv wheel in $WHEELS"; exit 2; }

if [[ ! -f $VENV/.installed ]]; then  # (a venv whose installation broke off is completed)
  PY312=${PY312:-}
  if [[ -z $PY312 ]]; then
    for candidate in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
      if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
        PY312=$candidate; break
      fi
    done
  fi
  [[ -n $PY312 ]] || { echo "no Python 3.12 found: set PY312"; exit 2; }
  echo "=== venv $VENV ($PY312)"
  [[ -x $VENV/bin/python ]] || "$PY312" -m venv "$VENV"
  # the GPU machine's packages (gpu-device.md), and six, which mmdet imports
  "$VENV/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 numpy opencv-python-headless \
    matplotlib scipy pyyaml rich tqdm pytest six
  "$VENV/bin/pip" install -q --no-index --no-deps --no-compile "$WHEELS"/*.whl
  touch "$VENV/.installed"
fi
"$VENV/bin/python" - <<'EOF'
import torch, mmcv, mmdet.models
from mmcv.ops import get_compiling_cuda_version
print('rehearsal stack: torch', torch.__version__, '| mmcv', mmcv.__version__, '(CUDA',
      get_compiling_cuda_version() + ') | mmdet', mmdet.__version__)
EOF

# inductor's cache of its own: one shared with another torch version failed a C++ compile here
# (its precompiled header)
export TORCHINDUCTOR_CACHE_DIR=$VENV/inductor_cache
STATUS=0
OUT=$OUT PYTHON=$VENV/bin/python bash .dev_scripts/gpu_benchmark.sh --dry-run || STATUS=$?
if (( TESTS )); then
  PYTHONPATH=$PWD "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests || STATUS=$?
fi
exit $STATUS
