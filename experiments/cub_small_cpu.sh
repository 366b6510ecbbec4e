#!/usr/bin/env bash
# A CPU-sized check of the cub pipeline with the steps of the SDN schedule in order: 64x64,
# text encoder 300 steps, Stage-I and Stage-II 100 steps each, 200 test
# captions evaluated. Random teacher and Inception weights keep it offline, so
# its scores only show that every step runs.
# Usage: experiments/cub_small_cpu.sh DATA_DIR [RUN_DIR]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATASET=cub DATA_DIR=${1:?usage: cub_small_cpu.sh DATA_DIR [RUN_DIR]} \
  RUN=${2:-runs/cub_small_cpu} IMAGE_SIZE=64 TEXT_MAX_STEPS=300 MAX_STEPS=100 \
  TEACHER_WEIGHTS=${TEACHER_WEIGHTS:-random} INCEPTION_WEIGHTS=${INCEPTION_WEIGHTS:-random} \
  EVAL_MAX_CAPTIONS=200 "$HERE/paper_schedule.sh"
