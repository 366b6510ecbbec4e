#!/usr/bin/env bash
# SDN on Oxford-102 flowers with the paper's schedule: 224x224, batch 12, Adam
# 1e-4, Stage-I 100 epochs, Stage-II 100 epochs from Stage-I, then export and
# sdn-eval on every test caption. Needs a GPU.
# Usage: experiments/flowers_full.sh DATA_DIR [RUN_DIR]
# DATA_DIR contains jpg/, Reed et al.'s text_c10/ captions and trainvalclasses.txt
# and testclasses.txt.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATASET=flowers DATA_DIR=${1:?usage: flowers_full.sh DATA_DIR [RUN_DIR]} \
  RUN=${2:-runs/flowers_full} "$HERE/paper_schedule.sh"
