"""sdn-train: train one SDN stage.

Stage-I, then Stage-II from the Stage-I result, on the default shapes data:

  sdn-train --workdir=runs/stage1 --stage=1 --text_encoder=runs/text \
      --teacher_weights=random
  sdn-train --workdir=runs/stage2 --stage=2 --init_from=runs/stage1 \
      --text_encoder=runs/text --teacher_weights=random
"""

from absl import app

from sdn_tf import flags as sdn_flags
from sdn_tf.schemes import check_scheme, default_stage
from sdn_tf.train import SDNConfig, train
from sdn_tf.cli.errors import run_program

FLAGS = sdn_flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    # stage1 and stage2 fix their stage, so --stage may be left out for them.
    stage = int(FLAGS.stage)
    if not FLAGS["stage"].present:
        stage = default_stage(FLAGS.scheme, stage)
    config = SDNConfig(
        workdir=FLAGS.workdir, scheme=FLAGS.scheme, stage=stage, dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, image_size=FLAGS.image_size, crop=FLAGS.crop,
        train_classes=tuple(FLAGS.train_classes), test_classes=tuple(FLAGS.test_classes),
        teacher_weights=FLAGS.teacher_weights, teacher_preset=FLAGS.teacher_preset,
        text_encoder=FLAGS.text_encoder, text_embeddings=FLAGS.text_embeddings,
        init_from=FLAGS.init_from, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, epochs=FLAGS.epochs, max_steps=FLAGS.max_steps,
        log_every=FLAGS.log_every, checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, sample_every=FLAGS.sample_every,
        seed=FLAGS.seed, precision=FLAGS.precision, jit_compile=FLAGS.jit_compile,
        tap_weights=FLAGS.tap_weights, image_weight=FLAGS.image_weight,
        num_images=FLAGS.num_images,
        init_image_bias=FLAGS.init_image_bias, generator_init=FLAGS.generator_init,
        image_gain=FLAGS.image_gain, normalise_embeddings=FLAGS.normalise_embeddings,
        whiten_embeddings=FLAGS.whiten_embeddings,
        cache_teacher_taps=FLAGS.cache_teacher_taps,
        on_nan=FLAGS.on_nan,
        max_nan_restores=FLAGS.max_nan_restores, strategy=FLAGS.strategy,
        background_checkpoints=FLAGS.background_checkpoints)
    try:
        check_scheme(config.scheme, config.stage, config.num_images, config.init_from,
                     config.image_weight)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    train(config)


def run():
    sdn_flags.define_data_flags()
    sdn_flags.define_teacher_flags()
    sdn_flags.define_run_flags()
    sdn_flags.define_sdn_flags()
    run_program(main)


if __name__ == "__main__":
    run()
