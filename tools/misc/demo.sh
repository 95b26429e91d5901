#!/usr/bin/env bash
# The demo: make a synthetic TBX11K, train the tiny 1-GPU config (1 image x 2 accumulation steps)
# on the CPU for a short run, evaluate it with the TBX11K protocol and print the AP table.
#   DEMO_DATA (data/tbx11k_synthetic)  DEMO_WORK_DIR (work_dirs/demo)  DEMO_EPOCHS (12)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DATA="${DEMO_DATA:-data/tbx11k_synthetic}"
WORK="${DEMO_WORK_DIR:-work_dirs/demo}"
EPOCHS="${DEMO_EPOCHS:-12}"
CONFIG=configs/dino_tbx11k_tiny_1gpu.py

if [[ ! -f "$DATA/annotations/json/TBX11K_train.json" ]]; then
  echo "[demo] making a synthetic TBX11K in $DATA"
  "$PY" tools/make_synthetic_tbx11k.py "$DATA" --num-train 48 --num-val 16 --num-test 8
fi
"$PY" tools/check_dataset.py "$DATA" --no-decode | tail -n 3

echo "[demo] training $CONFIG for $EPOCHS epochs on the CPU (work dir $WORK)"
if [[ -f "$WORK/epoch_$EPOCHS.pth" ]]; then
  echo "[demo] $WORK/epoch_$EPOCHS.pth exists: skipping training (rm -r $WORK to retrain)"
else
  "$PY" tools/train.py "$CONFIG" --work-dir "$WORK" --data-root "$DATA" \
    --cfg-options train_cfg.max_epochs="$EPOCHS" train_cfg.val_interval="$EPOCHS" \
    "param_scheduler.1.milestones=[$((EPOCHS * 2 / 3)),$((EPOCHS * 5 / 6))]" \
    param_scheduler.1.end="$EPOCHS" default_hooks.logger.interval=10 2>&1 \
    | grep -E "mmengine - (INFO|WARNING|ERROR)|Error" \
    | grep -E "Effective batch|Counters are|Epoch\(train\)|ERROR|Error" \
    | sed -E 's/(loss: [0-9.]+).*/\1/'
fi

echo "[demo] evaluating $WORK/epoch_$EPOCHS.pth on the synthetic val split"
"$PY" tools/test.py "$CONFIG" "$WORK/epoch_$EPOCHS.pth" --data-root "$DATA" \
  --work-dir "$WORK/test" > "$WORK/test.log" 2>&1 || { tail -n 40 "$WORK/test.log"; exit 1; }
cat "$WORK/test/metrics.md"
echo "[demo] done: metrics in $WORK/test/metrics.json, plots in $WORK/test/*.png"
