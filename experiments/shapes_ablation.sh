#!/usr/bin/env bash
# Every ablation scheme of the SDN paper's Table 3 on the shapes dataset at
# 64x64 on a CPU: one text encoder (600 steps), then STEPS training steps per
# scheme, export, sdn-eval on 120 test captions, and figures.
# Usage: experiments/shapes_ablation.sh [RUN_DIR]
# Random teacher and Inception weights keep it offline; its Inception scores
# are not comparable with those of Yuan & Peng (ACM MM 2018).
set -euo pipefail
RUN=${1:-runs/shapes_ablation}
STEPS=${STEPS:-150}
TEACHER_WEIGHTS=${TEACHER_WEIGHTS:-random}
HERE=$(cd "$(dirname "$0")" && pwd)
sdn-train-text --workdir="$RUN/text" --dataset=shapes --image_size=64 \
  --teacher_weights="$TEACHER_WEIGHTS" --batch_size=20 --learning_rate=1e-3 --dropout=0 \
  --max_steps=600
python "$HERE/../tools/run_ablation.py" --dataset=shapes --out="$RUN" --steps="$STEPS" \
  --text_encoder="$RUN/text" --teacher_weights="$TEACHER_WEIGHTS" \
  --inception_weights=random --max_captions=120 --skip=fsim
