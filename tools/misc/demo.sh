#!/usr/bin/env bash
# The demo: make an easy synthetic TBX11K (256 px films, large bright lesions), train the tiny
# DINO of configs/demo/dino_tbx11k_demo.py from scratch on the CPU (1 image x 2 accumulation
# steps per optimizer step), evaluate it on the synthetic val split with the TBX11K protocol,
# print the AP table and draw its detections next to the ground truth on a val film with lesions.
# Environment (defaults in brackets):
#   DEMO_DATA [data/tbx11k_demo]  DEMO_WORK_DIR [work_dirs/demo]  DEMO_EPOCHS [the config's]
#   DEMO_NUM_TRAIN [64]  DEMO_NUM_VAL [16]  DEMO_WEIGHTS [raw: the trained weights; ema]
#   PYTHON [.venv/bin/python]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DATA="${DEMO_DATA:-data/tbx11k_demo}"
WORK="${DEMO_WORK_DIR:-work_dirs/demo}"
NUM_TRAIN="${DEMO_NUM_TRAIN:-64}"
NUM_VAL="${DEMO_NUM_VAL:-16}"
WEIGHTS="${DEMO_WEIGHTS:-raw}"
CONFIG=configs/demo/dino_tbx11k_demo.py
EPOCHS="${DEMO_EPOCHS:-$(sed -n 's/^max_epochs = \([0-9]*\).*/\1/p' "$CONFIG")}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"  # pkg_resources & co. on every tool's start

if [[ ! -f "$DATA/annotations/json/TBX11K_train.json" ]]; then
  echo "[demo] making an easy synthetic TBX11K in $DATA ($NUM_TRAIN train, $NUM_VAL val films)"
  "$PY" tools/make_synthetic_tbx11k.py "$DATA" --size 256 --num-train "$NUM_TRAIN" \
    --num-val "$NUM_VAL" --num-test 4 --num-extra 0 --tb-fraction 0.6 --healthy-fraction 0.2 \
    --lesion-scale 1.5 --lesion-contrast 1.5 --max-lesions 2 > /dev/null
fi
"$PY" tools/check_dataset.py "$DATA" --no-decode | tail -n 1

CKPT="$WORK/epoch_$EPOCHS.pth"
if [[ -f "$CKPT" ]]; then
  echo "[demo] $CKPT exists: skipping training (rm -r $WORK to retrain)"
else
  echo "[demo] training $CONFIG for $EPOCHS epochs on the CPU (work dir $WORK, log $WORK/train.log)"
  mkdir -p "$WORK"
  # no validation while training (tools/test.py evaluates below); the LR drops 10x for the
  # last eighth of the epochs
  if ! "$PY" tools/train.py "$CONFIG" --work-dir "$WORK" --data-root "$DATA" --cfg-options \
      train_cfg.max_epochs="$EPOCHS" train_cfg.val_begin=$(( EPOCHS + 1 )) \
      "param_scheduler.1.milestones=[$(( EPOCHS > 1 ? EPOCHS * 7 / 8 : 1 ))]" \
      param_scheduler.1.end="$EPOCHS" > "$WORK/train.log" 2>&1; then
    tail -n 30 "$WORK/train.log"
    echo "[demo] training failed: the whole log is $WORK/train.log" >&2
    exit 1
  fi
  # the loss at the end of (at most 8 of) the epochs
  grep -E "Epoch\(train\) +\[[0-9]+\]\[ *([0-9]+)/\1\]" "$WORK/train.log" \
    | awk -v n="$EPOCHS" 'NR % int((n + 7) / 8) == 0 || NR == n' \
    | sed -E 's/.*(Epoch\(train\) +\[[0-9]+\]).*(time: [0-9.]+).*(  loss: [0-9.]+).*/[demo] \1 \2 s\/step \3/' \
    || true
fi

echo "[demo] evaluating $CKPT ($WEIGHTS weights) on the synthetic val split"
if ! "$PY" tools/test.py "$CONFIG" "$CKPT" --data-root "$DATA" --work-dir "$WORK/test" \
    --weights "$WEIGHTS" --show-dir vis > "$WORK/test.log" 2>&1; then
  tail -n 30 "$WORK/test.log"
  echo "[demo] evaluation failed: the whole log is $WORK/test.log" >&2
  exit 1
fi
# the detection table of metrics.md (the FROC and image-level tables follow it there)
sed -n '/^## Detection/,/^AP = /p' "$WORK/test/metrics.md" | sed '$d'
# a val film with lesions: ground truth (left) and detections (right), drawn by test.py
DRAWING="$("$PY" - "$DATA" "$WORK/test" <<'EOF'
import glob, json, os.path as osp, sys
data, test_dir = sys.argv[1:3]
with open(osp.join(data, 'annotations/json/TBX11K_val.json')) as f:
    coco = json.load(f)
with_boxes = {a['image_id'] for a in coco['annotations']}
for image in sorted(coco['images'], key=lambda i: i['file_name']):
    if image['id'] in with_boxes:
        found = sorted(glob.glob(osp.join(test_dir, '*', 'vis', image['file_name'])))
        if found:
            print(found[-1])
            break
EOF
)"
echo "[demo] metrics: $WORK/test/metrics.md, plots: $WORK/test/*.png"
if [[ -n "$DRAWING" ]]; then
  echo "[demo] drawn: $DRAWING (left: ground truth, right: detections scoring >= 0.3)"
else
  echo "[demo] no drawing of a val film with lesions under $WORK/test/*/vis/" >&2
  exit 1
fi
