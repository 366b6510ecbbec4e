#!/usr/bin/env bash
# The SDN schedule of Yuan & Peng (ACM MM 2018) on one dataset: text encoder,
# Stage-I for STAGE1_EPOCHS, Stage-II for STAGE2_EPOCHS started from the
# Stage-I generator, export, and sdn-eval on the test split. cub_full.sh,
# flowers_full.sh and the *_small_cpu.sh scripts set the variables and call it.
#
# Required: DATASET (cub, flowers or folder), DATA_DIR, RUN.
# Optional, with the paper's values as defaults: IMAGE_SIZE=224, BATCH_SIZE=12,
# LEARNING_RATE=1e-4, STAGE1_EPOCHS=100, STAGE2_EPOCHS=100; MAX_STEPS (0: no
# cap) limits each stage, TEXT_EPOCHS=10 and TEXT_MAX_STEPS=0 the text encoder;
# TEACHER_WEIGHTS=imagenet and INCEPTION_WEIGHTS=imagenet download Keras
# weights once; EVAL_MAX_CAPTIONS=0 evaluates every test caption.
# TEXT_FLAGS and TRAIN_FLAGS add flags to sdn-train-text and to both sdn-train
# runs, for example TRAIN_FLAGS="--generator_init=he --image_gain=64".
# TEXT_EMBEDDINGS=pickle trains on the dataset's char-CNN-RNN-embeddings.pickle
# instead of a new text encoder; that run cannot be exported, so it stops
# after training.
# Reruns resume every step from its newest checkpoint.
set -euo pipefail
: "${DATASET:?set DATASET=cub, flowers or folder}" "${DATA_DIR:?set DATA_DIR}" "${RUN:?set RUN}"
IMAGE_SIZE=${IMAGE_SIZE:-224}
BATCH_SIZE=${BATCH_SIZE:-12}
LEARNING_RATE=${LEARNING_RATE:-1e-4}
STAGE1_EPOCHS=${STAGE1_EPOCHS:-100}
STAGE2_EPOCHS=${STAGE2_EPOCHS:-100}
MAX_STEPS=${MAX_STEPS:-0}
TEXT_EPOCHS=${TEXT_EPOCHS:-10}
TEXT_MAX_STEPS=${TEXT_MAX_STEPS:-0}
TEACHER_WEIGHTS=${TEACHER_WEIGHTS:-imagenet}
INCEPTION_WEIGHTS=${INCEPTION_WEIGHTS:-imagenet}
EVAL_MAX_CAPTIONS=${EVAL_MAX_CAPTIONS:-0}
TEXT_EMBEDDINGS=${TEXT_EMBEDDINGS:-encoder}
SCHEME=${SCHEME:-sdn}
read -r -a EXTRA_TEXT <<< "${TEXT_FLAGS:-}"
read -r -a EXTRA_TRAIN <<< "${TRAIN_FLAGS:-}"
COMMON=(--dataset="$DATASET" --data_dir="$DATA_DIR" --image_size="$IMAGE_SIZE"
        --teacher_weights="$TEACHER_WEIGHTS")

if [[ "$TEXT_EMBEDDINGS" == encoder ]]; then
  sdn-train-text --workdir="$RUN/text" "${COMMON[@]}" --epochs="$TEXT_EPOCHS" \
    --max_steps="$TEXT_MAX_STEPS" ${EXTRA_TEXT[@]+"${EXTRA_TEXT[@]}"}
  TEXT=(--text_encoder="$RUN/text")
else
  TEXT=(--text_embeddings=pickle)
fi
SDN=("${COMMON[@]}" "${TEXT[@]}" --scheme="$SCHEME" --batch_size="$BATCH_SIZE"
     --learning_rate="$LEARNING_RATE" --max_steps="$MAX_STEPS"
     ${EXTRA_TRAIN[@]+"${EXTRA_TRAIN[@]}"})
sdn-train --workdir="$RUN/stage1" --stage=1 --epochs="$STAGE1_EPOCHS" "${SDN[@]}"
sdn-train --workdir="$RUN/stage2" --stage=2 --init_from="$RUN/stage1" \
  --epochs="$STAGE2_EPOCHS" "${SDN[@]}"
if [[ "$TEXT_EMBEDDINGS" != encoder ]]; then
  echo "Trained on precomputed embeddings: $RUN/stage2 cannot be exported or evaluated."
  exit 0
fi
sdn-export --workdir="$RUN/stage2" --export_dir="$RUN/export"
sdn-eval --model="$RUN/export" --dataset="$DATASET" --data_dir="$DATA_DIR" \
  --output_dir="$RUN/eval" --inception_weights="$INCEPTION_WEIGHTS" \
  --max_captions="$EVAL_MAX_CAPTIONS" --retrieval_figure=8
echo "Metrics in $RUN/eval/metrics.md"
