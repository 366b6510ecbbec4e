"""sdn-train-text: train the char-CNN-RNN text encoder with the DS-SJE loss.

On the default shapes data, with a random-weight teacher for an offline run
(3 epochs of 1,200 steps; the flags that differ from the defaults sped up
training on shapes):

  sdn-train-text --workdir=runs/text --teacher_weights=random \
      --batch_size=20 --learning_rate=1e-3 --dropout=0 --epochs=3

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""

from absl import app, flags

from sdn_tf import flags as sdn_flags
from sdn_tf.text.encoder import RNN_TYPES
from sdn_tf.text.train import (LEARNING_RATE_DECAYS, NEIGHBOUR_POOL, NEIGHBOUR_SPACES,
                                TextTrainConfig, train_text_encoder)
from sdn_tf.cli.errors import run_program

FLAGS = sdn_flags.FLAGS


def define_text_flags() -> None:
    """Flags of sdn-train-text only: the encoder's architecture and loss margin."""
    flags.DEFINE_enum("rnn", "gru", RNN_TYPES,
                      "Recurrent layer: gru (the CUB encoder behind StackGAN's embeddings) "
                      "or rnn (plain tanh layer, the default of Reed et al.'s cvpr2016 code).")
    flags.DEFINE_integer("embedding_dim", 1024, "Size of the text embedding.", lower_bound=1)
    flags.DEFINE_float("dropout", 0.5, "Dropout rate on the averaged recurrent states.",
                       lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_float("margin", 1.0, "Hinge margin of the DS-SJE loss.", lower_bound=0.0)
    flags.DEFINE_integer("feature_batch_size", 32, "Images per teacher forward pass when "
                         "computing the image features.", lower_bound=1)
    flags.DEFINE_integer("feature_grid", 1, "Pool each teacher tap to a grid x grid layout "
                         "for the image features; 1 (Reed et al.) takes spatial means and "
                         "so drops where objects are.", lower_bound=1, upper_bound=7)
    flags.DEFINE_bool("fused_update", False,
                      "Compile the Adam update with XLA on its own, on a CPU without "
                      "whole-step XLA: about 30 % shorter steps with --feature_grid=3 on 2 "
                      "cores, but other rounding, so the encoder differs from an unfused run.")
    flags.DEFINE_enum("negatives", "class", ("class", "instance", "class+instance"),
                      "DS-SJE negatives: captions and images of other classes (Reed et al.), "
                      "of every other image, which teaches within-class detail such as "
                      "position and size, or both losses summed.")
    flags.DEFINE_integer("batch_neighbours", 0,
                         "Fill each batch with groups of 1 + this many images that look "
                         "alike in the teacher's features: an anchor pair plus captions of "
                         f"images drawn from its image's {NEIGHBOUR_POOL} nearest "
                         "neighbours. With --negatives=instance these hard negatives keep "
                         "the loss from saturating once layout and background are encoded. 0 draws "
                         "batches at random.", lower_bound=0, upper_bound=NEIGHBOUR_POOL)
    flags.DEFINE_enum("neighbour_space", "greyscale", NEIGHBOUR_SPACES,
                      "Teacher features in which --batch_neighbours finds similar images: "
                      "of the greyscale images, so neighbours share the layout and differ "
                      "in colour, or of the RGB images, whose neighbours mostly share the "
                      "colour too.")
    flags.DEFINE_enum("learning_rate_decay", "none", LEARNING_RATE_DECAYS,
                      "none keeps --learning_rate; cosine lowers it to 0 at the last step "
                      "along a half cosine, so the final weights are not those of a late "
                      "loss spike.")
    # Defaults that differ from the generator's: the DS-SJE loss needs
    # negatives of other classes in each batch, so batches are larger, and
    # 7e-4 is the learning rate of StackGAN's CUB encoder.
    FLAGS.set_default("batch_size", 40)
    FLAGS.set_default("learning_rate", 7e-4)
    FLAGS.set_default("epochs", 10)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    config = TextTrainConfig(
        workdir=FLAGS.workdir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        image_size=FLAGS.image_size, crop=FLAGS.crop, teacher_weights=FLAGS.teacher_weights,
        train_classes=tuple(FLAGS.train_classes), test_classes=tuple(FLAGS.test_classes),
        teacher_preset=FLAGS.teacher_preset, embedding_dim=FLAGS.embedding_dim, rnn=FLAGS.rnn,
        dropout=FLAGS.dropout, margin=FLAGS.margin, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, epochs=FLAGS.epochs, max_steps=FLAGS.max_steps,
        log_every=FLAGS.log_every, checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, seed=FLAGS.seed, precision=FLAGS.precision,
        jit_compile=FLAGS.jit_compile, feature_batch_size=FLAGS.feature_batch_size,
        feature_grid=FLAGS.feature_grid, negatives=FLAGS.negatives,
        fused_update=FLAGS.fused_update, batch_neighbours=FLAGS.batch_neighbours,
        neighbour_space=FLAGS.neighbour_space,
        learning_rate_decay=FLAGS.learning_rate_decay)
    config.on_nan = FLAGS.on_nan
    config.max_nan_restores = FLAGS.max_nan_restores
    train_text_encoder(config)


def run():
    sdn_flags.define_data_flags()
    sdn_flags.define_teacher_flags()
    sdn_flags.define_run_flags()
    define_text_flags()
    run_program(main)


if __name__ == "__main__":
    run()
