#!/usr/bin/env bash
# SDN on CUB-200-2011 with the paper's schedule: 224x224, batch 12, Adam 1e-4,
# Stage-I 100 epochs, Stage-II 100 epochs from Stage-I, then export and
# sdn-eval on all 29,330 test captions. Sized for a GPU: one Stage-I epoch is
# 88,550 (image, caption) pairs.
# Usage: experiments/cub_full.sh DATA_DIR [RUN_DIR]
# DATA_DIR is the StackGAN birds/ folder: CUB_200_2011/ with images/, text_c10/
# (or text/) with the captions, and train/ and test/ with filenames.pickle.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATASET=cub DATA_DIR=${1:?usage: cub_full.sh DATA_DIR [RUN_DIR]} \
  RUN=${2:-runs/cub_full} "$HERE/paper_schedule.sh"
