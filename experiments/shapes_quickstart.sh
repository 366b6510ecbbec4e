#!/usr/bin/env bash
# The main job on the embedded shapes dataset, sized for a 2-core CPU:
# text encoder, Stage-I, Stage-II from Stage-I, export, generation and the
# colour check on held-out captions. Usage: experiments/shapes_quickstart.sh [RUN_DIR]
#
# The teacher has random weights because ImageNet weights need a download;
# with internet, set TEACHER_WEIGHTS=imagenet (or a local .h5 path).
set -euo pipefail
RUN=${1:-runs/shapes_quickstart}
TEACHER_WEIGHTS=${TEACHER_WEIGHTS:-random}
TEXT_STEPS=${TEXT_STEPS:-3000}
STAGE1_STEPS=${STAGE1_STEPS:-4200}
STAGE2_STEPS=${STAGE2_STEPS:-100}
COMMON=(--dataset=shapes --image_size=64 --teacher_weights="$TEACHER_WEIGHTS" --log_every=50)
# Options for short runs, explained in the README's fidelity notes. The text
# encoder keeps where the object is and how large it is. Each of its batches
# pairs 10 captions with captions of images that look alike in greyscale
# (same layout, mostly another colour), so it must learn the colour words.
# Its learning rate decays to 0, so no late loss spike stays in the final
# weights. The generator starts
# He-initialised, at the pixel scale and on whitened embeddings, because the
# colour explains only about 12 % of the raw embeddings' variance. Its tap
# terms weigh 0.005: the random teacher's taps are 30 to 95 on average, and
# larger weights slowed the image term. Stage-II repeats the options that
# shape the generator. Stage-I keeps the teacher's taps of the 2,400 training
# images in memory (6.4 GB), which spares one teacher pass per step.
TEXT_OPTIONS=(--batch_size=20 --learning_rate=1e-3 --dropout=0 --feature_grid=3
              --negatives=instance --batch_neighbours=1 --learning_rate_decay=cosine)
GENERATOR=(--image_gain=64 --whiten_embeddings --tap_weights=all=0.005)

start=$(date +%s)
sdn-train-text --workdir="$RUN/text" "${COMMON[@]}" --max_steps="$TEXT_STEPS" \
  "${TEXT_OPTIONS[@]}"
sdn-train --workdir="$RUN/stage1" --stage=1 --text_encoder="$RUN/text" "${COMMON[@]}" \
  --max_steps="$STAGE1_STEPS" --generator_init=he --init_image_bias "${GENERATOR[@]}" \
  --sample_every=250 --checkpoint_every=250 --cache_teacher_taps
sdn-train --workdir="$RUN/stage2" --stage=2 --init_from="$RUN/stage1" \
  --text_encoder="$RUN/text" "${COMMON[@]}" --max_steps="$STAGE2_STEPS" "${GENERATOR[@]}" \
  --sample_every=250 --checkpoint_every=250
sdn-export --workdir="$RUN/stage2" --export_dir="$RUN/export"
python -m sdn_tf.cli.colour_check --model="$RUN/export" --output_dir="$RUN/generated"
echo "Main job finished in $(( $(date +%s) - start )) s; images and colour_check.json in $RUN/generated"
