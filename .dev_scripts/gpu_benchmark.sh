#!/usr/bin/env bash
# The speed benchmark on a GPU machine, one call each (H100: at most ~8.5 min --compile, ~5 min eager):
#   bash .dev_scripts/gpu_benchmark.sh              # eager: configs/dino_tbx11k_1gpu.py beside stock mmdet
#                                            # DINO (batch 1 x acc 2, batch 2 x acc 1, inference
#                                            # batch 1 and 8), the PyTorch-fallback check, and each
#                                            # eager speed-up switch on its own (PROFILE=1: also a
#                                            # profile of 2 steps: launches, syncs, GPU busy)
#   bash .dev_scripts/gpu_benchmark.sh --compile    # ours and stock, then the torch.compile variants (each
#                                            # compiles the full model afresh: minutes; the first H100
#                                            # run gave one 150 s and it had not finished)
#   bash .dev_scripts/gpu_benchmark.sh --dry-run    # CPU, tiny config, few steps: checks this script
# Each: installs the wheels of .whl/ into /tmp/site when mmdet is not importable (gpu-device.md),
# makes one synthetic TBX11K (64 train images, 512 px), prints every figure (tables, then the json
# files) and leaves them in $OUT.
#
# Environment: OUT (default /tmp/tbx11k_gpu_benchmark), PYTHON (default python3, or .venv's on a
# dry run), STEPS / WARMUP / INFER_STEPS / INFER_BS (batched inference), VARIANTS (comma-separated,
# replaces the mode's list), BUDGET (seconds for the run: no case starts after it), SLACK (seconds
# past BUDGET before the run is stopped), AMP_RUN=1 (also ours vs stock under fp16 AMP: on the
# first H100 run AMP was slower, 5.5 vs 6.6 img/s, the step being host-bound).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0 COMPILE=0
case "$#:${1:-}" in
  1:--dry-run) DRY_RUN=1 ;;
  1:--compile) COMPILE=1 ;;
  0:) ;;
  *) echo "usage: bash .dev_scripts/gpu_benchmark.sh [--compile | --dry-run]"; exit 2 ;;
esac
OUT=${OUT:-/tmp/tbx11k_gpu_benchmark}
mkdir -p "$OUT"
T0=$(date +%s)
say() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }

if (( DRY_RUN )); then
  PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
  CONFIG=configs/dino_tbx11k_tiny_1gpu.py
  DEVICE=(--device cpu)
  STEPS=${STEPS:-3}; WARMUP=${WARMUP:-2}; INFER_STEPS=${INFER_STEPS:-3}; INFER_BS=${INFER_BS:-2}
  IMAGES=16; SIZE=128; BUDGET=${BUDGET:-120}
  SLACK=${SLACK:-400}  # a case started within the budget may compile for minutes on 2 CPU cores
  VARIANTS=${VARIANTS:-per_group_optimizer,torch_compile,amp_bf16}  # CPU-run, compiled, skipped
  EXTRA=(--batch2 --infer --profile --infer-batch-size "$INFER_BS")
  AMP=()                                     # AmpOptimWrapper refuses the CPU
else
  PYTHON=${PYTHON:-python3}
  CONFIG=configs/dino_tbx11k_1gpu.py
  DEVICE=(--device cuda)
  STEPS=${STEPS:-20}; WARMUP=${WARMUP:-5}; INFER_STEPS=${INFER_STEPS:-30}; INFER_BS=${INFER_BS:-8}
  IMAGES=64; SIZE=512
  if (( COMPILE )); then
    # CUDA graphs with decoder and head branches padded to one shape per image size first: the
    # ~7 ms host estimate per micro-batch assumes CUDA graphs (README); then the same with the
    # safe eager switches (the 1-GPU config's candidate), unpadded (what padding brings), without
    # CUDA graphs (what they bring); each case traces afresh, inductor's on-disk cache may spare
    # some code generation for graphs an earlier case made
    VARIANTS=${VARIANTS:-torch_compile_cudagraphs_padded,safe_all_cudagraphs_padded,torch_compile_cudagraphs,torch_compile,safe_all_compiled}
    EXTRA=()
    BUDGET=${BUDGET:-360}; SLACK=${SLACK:-100}   # with set-up and summary: <= ~510 s
  else
    # the first H100 run's open question first (the budget cuts the tail); PROFILE=1 adds the
    # profile of ours and stock (~80 s; the first run has them)
    VARIANTS=${VARIANTS:-per_group_optimizer,pad_denoising_queries,safe_all,no_mmcv_kernels,fused_adamw,no_custom_hooks,stock_loss_head,cudnn_benchmark,no_verify_loss_counts,per_tensor_ema,safe_all_bf16,amp_bf16}
    EXTRA=(--batch2 --infer --infer-batch-size "$INFER_BS")
    [[ ${PROFILE:-0} == 1 ]] && EXTRA+=(--profile)
    BUDGET=${BUDGET:-200}; SLACK=${SLACK:-40}     # with set-up and summary: <= ~290 s
  fi
  AMP=()
  [[ ${AMP_RUN:-0} == 1 ]] && AMP=(--amp --amp-dtype float16)
fi

# ---- 1. packages --------------------------------------------------------------------------
if ! PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -c 'import mmdet.models' 2>/dev/null; then
  say "installing the wheels of .whl/ into /tmp/site"
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl: copy the GPU machine's wheels (rehearse_gpu_run.sh) to .whl/"; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 2
fi
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if ! "$PYTHON" -c 'import mmdet.models'; then
  # mmdet 3.3.0 imports six (mmdet/models/utils/misc.py), which the GPU machine's wheels may lack
  "$PYTHON" -c 'import six' 2>/dev/null || echo "no six here: pip download six --no-deps -d .whl" \
    "on the CPU machine, and carry .whl again"
  echo "import mmdet.models failed (above)"; exit 2
fi

say "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
"$PYTHON" - <<'EOF'
import os, platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None,
      '| CPUs', os.cpu_count())
import mmcv, mmdet, mmengine
from mmcv.ops import get_compiling_cuda_version
print('mmcv', mmcv.__version__, '(compiled with CUDA', get_compiling_cuda_version() + ')',
      '| mmdet', mmdet.__version__, '| mmengine', mmengine.__version__)
# torch.compile on a GPU: Triton builds its launcher with a C compiler and Python.h
import shutil, sysconfig
python_h = os.path.join(sysconfig.get_paths()['include'], 'Python.h')
print('C compiler', os.environ.get('CC') or shutil.which('gcc') or shutil.which('clang'),
      '| Python.h', python_h if os.path.isfile(python_h) else 'missing (torch.compile cases will fail)')
EOF

# ---- 2. data ------------------------------------------------------------------------------
DATA=/tmp/tbx11k_bench_data_${IMAGES}_${SIZE}
say "synthetic TBX11K: $DATA"
"$PYTHON" - "$DATA" "$IMAGES" "$SIZE" <<'EOF' || exit 3
import sys
from tbx11k.benchmark.cases import prepare_data
prepare_data(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
EOF

COMMON=("$CONFIG" "${DEVICE[@]}" --steps "$STEPS" --warmup "$WARMUP" --infer-steps "$INFER_STEPS"
        --num-images "$IMAGES" --image-size "$SIZE" --data-root "$DATA")
STATUS=0

# ---- 3. fp32: ours vs stock (eager: batch 2, inference, profile), each switch on its own ----------
say "fp32 run (budget ${BUDGET} s): $VARIANTS"
# past budget + slack: SIGTERM, then SIGKILL 15 s later (during an `ours` training case the config's
# PreemptionHook takes SIGTERM as "checkpoint at the next step and exit"; timeout signals inductor's
# compiler processes too); cases already measured stay in the json, rewritten atomically after each
timeout -k 15 $(( BUDGET + SLACK )) "$PYTHON" tools/analysis_tools/benchmark.py "${COMMON[@]}" ${EXTRA[@]+"${EXTRA[@]}"} \
  --variants "$VARIANTS" --time-budget "$BUDGET" --json "$OUT/bench.json" \
  2> >(tee "$OUT/bench.stderr" >&2) | tee "$OUT/bench.txt"
(( ${PIPESTATUS[0]} )) && STATUS=1

# ---- 4. AMP: ours vs stock, inference ------------------------------------------------------
if (( ${#AMP[@]} )); then
  say "AMP run (fp16)"
  timeout -k 15 120 "$PYTHON" tools/analysis_tools/benchmark.py "${COMMON[@]}" "${AMP[@]}" --infer --time-budget 60 \
    --json "$OUT/bench_amp.json" 2> >(tee "$OUT/bench_amp.stderr" >&2) | tee "$OUT/bench_amp.txt"
  (( ${PIPESTATUS[0]} )) && STATUS=1
elif (( DRY_RUN )); then
  say "AMP run skipped (CPU dry run); a second run without stock instead"
  timeout -k 15 200 "$PYTHON" tools/analysis_tools/benchmark.py "${COMMON[@]}" --no-stock \
    --json "$OUT/bench_amp.json" 2> >(tee "$OUT/bench_amp.stderr" >&2) | tee "$OUT/bench_amp.txt"
  (( ${PIPESTATUS[0]} )) && STATUS=1
fi

# ---- 5. every figure ------------------------------------------------------------------------
say "all figures"
"$PYTHON" - "$OUT"/bench.json "$OUT"/bench_amp.json <<'EOF'
import json, os, sys
for path in sys.argv[1:]:
    if not os.path.isfile(path):
        print(f'{path}: missing'); continue
    r = json.load(open(path))
    e = r['environment']
    print(f"--- {os.path.basename(path)}: {e['gpu'] or 'cpu'}, torch {e['torch']}, MSDA: {e['msda_path']}, "
          f"focal loss: {e['kernels']['sigmoid_focal_loss']}, {r['total_seconds']:.0f} s")
    print(f"{'case':22} {'bxacc':5} {'amp':8} {'status':6} {'img/s':>8} {'s/step':>8} "
          f"{'median':>8} {'s/micro':>8} {'cpu s':>8} {'peak MiB':>8} {'steady':>8}")
    for c in r['cases']:
        ok = c['status'] == 'ok'
        head = (f"{c['name']:22} {c['batch_size']}x{c['accumulative_counts']:<3} "
                f"{str(c['amp'] or '-'):8} {'ok' if ok else c['status'][:70]:6} ")
        if ok and c['kind'] == 'profile':
            p = c['profile']
            print(head + f"aten ops/micro {p['aten_ops_per_micro_batch']:.0f}, "
                  f"launches/micro {p['kernel_launches_per_micro_batch']:.0f}, syncs/micro "
                  f"{p['syncs_per_micro_batch']:.0f}, copies/micro {p['memcpy_calls_per_micro_batch']:.0f}, "
                  f"GPU busy {p['gpu_busy_fraction']}, wall {p['wall_s']:.2f} s")
            for op in p['top_host_ops']:
                print(f"      {op['self_cpu_ms']:9.1f} ms  x{op['count']:<6} {op['name'][:80]}")
            continue
        print(head + (f"{c['img_per_s']:8.3f} {c['s_per_step']:8.4f} {c['s_per_step_median']:8.4f} "
                      f"{c['s_per_micro_batch']:8.4f} {c['cpu_s_per_step']:8.4f} "
                      f"{c['peak_mem_mib']:8.0f} "
                      + (f"{c['steady_img_per_s']:8.3f}" if c.get('steady_img_per_s') else f"{'-':>8}")
                      + (f" ({c['compiling_steps']} compiling steps left out)"
                         if c.get('compiling_steps') else '') if ok else ''))
    print('fallback check (PyTorch paths vs mmcv kernels):', json.dumps(e.get('fallback_check')))
    print('foreach EMA vs mmengine EMA:', json.dumps(e.get('foreach_ema_check')))
    print('BatchedLossDINOHead vs DINOHead:', json.dumps(e.get('batched_loss_check')))
    print('ratios:', json.dumps({k: (round(v, 3) if v is not None else None)
                                 for k, v in r['ratios'].items()}))
    print('targets:', json.dumps(r['targets']))
EOF
say "done (status $STATUS); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $STATUS
