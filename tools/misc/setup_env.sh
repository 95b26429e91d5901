#!/usr/bin/env bash
# Create .venv in the repository root and install everything tbx11k-dino needs.
#
#   bash tools/misc/setup_env.sh                  # builds mmcv 2.1.0 from source (~40 min on 2 cores)
#   WHEELHOUSE=DIR bash tools/misc/setup_env.sh   # takes a prebuilt mmcv wheel from folder DIR
#
# The wheelhouse is passed to pip as `--find-links DIR` on the command line. Never export
# PIP_FIND_LINKS for this: it replaces the machine's own find-links and pip then downloads a CUDA torch.
# Re-running is cheap: installed, importable pieces are kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
WHEELHOUSE="${WHEELHOUSE:-}"

step() { printf '\n[setup] %s\n' "$*"; }
die() { printf '\n[setup] ERROR: %s\n' "$*" >&2; exit 1; }

FIND_LINKS=()
if [[ -n "$WHEELHOUSE" ]]; then
  [[ -d "$WHEELHOUSE" ]] || die "WHEELHOUSE=$WHEELHOUSE is not a folder. Unset it to build mmcv from source, or point it at a folder of wheels."
  FIND_LINKS=(--find-links "$(cd "$WHEELHOUSE" && pwd)")
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create $VENV with $PYTHON -m venv (install python3-venv, or set PYTHON=/path/to/python3.11)"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

step "build tools (setuptools>=77,<82 keeps pkg_resources for mmcv's setup.py)"
"${PIP[@]}" -q "setuptools>=77,<82" wheel ninja \
  || die "could not install setuptools/wheel/ninja: check that PyPI is reachable"

if "$PY" -c "import torch" 2>/dev/null; then
  step "keeping installed torch $("$PY" -c 'import torch;print(torch.__version__)')"
else
  step "torch==$TORCH_VERSION (the CPU build on this machine's disk; set TORCH_VERSION to change)"
  "${PIP[@]}" -q "torch==$TORCH_VERSION" \
    || die "could not install torch==$TORCH_VERSION. Install the torch you want into $VENV first (e.g. a CUDA build) and rerun."
fi

if "$PY" -c "import mmcv, mmcv.ops; from mmcv.ops import MultiScaleDeformableAttention; assert mmcv.__version__=='2.1.0'" 2>/dev/null; then
  step "keeping installed mmcv 2.1.0 with compiled ops"
else
  if [[ ${#FIND_LINKS[@]} -gt 0 ]]; then
    step "mmcv 2.1.0 (a wheel from $WHEELHOUSE if one fits, else a source build)"
  else
    step "mmcv 2.1.0 from source with compiled ops (about 40 minutes on 2 cores; WHEELHOUSE=DIR skips this)"
  fi
  if "$PY" -c "import torch,sys; sys.exit(0 if torch.version.cuda else 1)" && command -v nvcc >/dev/null; then
    export FORCE_CUDA=1
    step "CUDA torch and nvcc found: building mmcv's CUDA kernels too"
  fi
  MMCV_WITH_OPS=1 "${PIP[@]}" --no-build-isolation "${FIND_LINKS[@]}" "mmcv==2.1.0" \
    || die "mmcv 2.1.0 failed to install. It needs gcc and the Python headers for a source build, or WHEELHOUSE=DIR holding mmcv-2.1.0-<python>-<platform>.whl built for torch $("$PY" -c 'import torch;print(torch.__version__)')."
  "$PY" -c "from mmcv.ops import MultiScaleDeformableAttention" \
    || die "mmcv installed but its compiled ops do not load (a wheel built for another torch?). Remove it ($PY -m pip uninstall mmcv) and rerun without WHEELHOUSE to build from source."
fi

step "mmengine 0.10.7, mmdet 3.3.0, pycocotools, pytest, ruff (requirements.txt)"
"${PIP[@]}" -q -r "$ROOT/requirements.txt" \
  || die "could not install requirements.txt: check that PyPI is reachable"
step "this package (editable)"
"${PIP[@]}" -q --no-deps --no-build-isolation -e "$ROOT" || die "could not install the tbx11k package from $ROOT"

"$PY" - <<'PY' || die "the environment does not import cleanly (see the traceback above)"
import torch, mmengine, mmcv, mmdet, pycocotools
import mmdet.models  # needs mmcv's compiled ops
import tbx11k
print(f"[setup] ok: torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, "
      f"mmdet {mmdet.__version__}, cuda={torch.cuda.is_available()}")
PY

# how to go on: the tools need this environment's python (a plain `python` lacks mmengine)
activate="$VENV/bin/activate"
[[ $activate == "$PWD/"* ]] && activate=${activate#"$PWD/"}
printf '\n[setup] done. Activate the environment in each new shell before running the tools:\n'
printf '    source %s\n' "$activate"
printf '[setup] then check your data and train, e.g.:\n'
printf '    python tools/check_dataset.py data/TBX11K\n'
printf '    python tools/train.py configs/dino_tbx11k_1gpu.py --data-root data/TBX11K\n'
printf '[setup] (no data yet? python tools/make_synthetic_tbx11k.py data/tbx11k_synthetic makes a small set in the same layout)\n'
