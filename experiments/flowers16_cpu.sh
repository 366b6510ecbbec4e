#!/usr/bin/env bash
# The SDN schedule on real Oxford-102 photographs at 64x64 on a CPU, for a
# flowers folder that has images and class labels but no captions (such as a
# subset with imagelabels.csv). tools/class_captions.py gives every image ten
# captions naming its class and holds out TEST_CLASSES; then the text encoder
# (300 steps), Stage-I (300 steps), Stage-II (100 steps), export and sdn-eval
# on every test caption run. Random teacher and Inception weights keep it
# offline, so the Inception score and FID compare runs of this script only.
# Usage: experiments/flowers16_cpu.sh FLOWERS_DIR [RUN_DIR]
#   FLOWERS_DIR contains jpg/ and imagelabels.csv (columns image,label,class_name).
set -euo pipefail
FLOWERS=${1:?usage: flowers16_cpu.sh FLOWERS_DIR [RUN_DIR]}
RUN=${2:-runs/flowers16_cpu}
TEST_CLASSES=${TEST_CLASSES:-6,10,49,67}
HERE=$(cd "$(dirname "$0")" && pwd)
python "$HERE/../tools/class_captions.py" --labels="$FLOWERS/imagelabels.csv" \
  --images="$FLOWERS/jpg" --out="$RUN/data" --test_classes="$TEST_CLASSES"
DATASET=folder DATA_DIR="$RUN/data" RUN="$RUN" IMAGE_SIZE=64 \
  TEXT_MAX_STEPS=${TEXT_MAX_STEPS:-300} MAX_STEPS=${MAX_STEPS:-300} \
  TEACHER_WEIGHTS=${TEACHER_WEIGHTS:-random} INCEPTION_WEIGHTS=${INCEPTION_WEIGHTS:-random} \
  TEXT_FLAGS="--batch_size=20 --learning_rate=1e-3 --dropout=0" \
  TRAIN_FLAGS=${TRAIN_FLAGS:-"--generator_init=he --image_gain=64 --init_image_bias --normalise_embeddings --tap_weights=all=0.05"} \
  "$HERE/paper_schedule.sh"
