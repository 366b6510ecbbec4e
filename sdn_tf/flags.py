"""Command-line flags of every sdn_tf program, defined and validated in one place.

Each program calls the `define_*` functions it needs before `app.run`; enum
flags reject unknown values at parse time and validators check the rest, so a
wrong flag fails before any model is built.
"""

from __future__ import annotations

from absl import flags

from sdn_tf.distribute import STRATEGIES
from sdn_tf.generator import GENERATOR_INITS
from sdn_tf.losses import parse_tap_weights
from sdn_tf.schemes import SCHEMES

FLAGS = flags.FLAGS

DATASETS = ("shapes", "cub", "flowers", "folder", "tfrecord")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def _is_multiple_of_32_in_range(value: int) -> bool:
    return value % 32 == 0 and 64 <= value <= 224


def define_data_flags() -> None:
    """Flags that choose the dataset and image size."""
    flags.DEFINE_enum("dataset", "shapes", DATASETS,
                      "Dataset to read; shapes is generated locally on first use, and "
                      "tfrecord reads a folder written by tools/prepare_dataset.py.")
    flags.DEFINE_string("data_dir", None,
                        "Dataset folder. For shapes: where to build or find the cache "
                        "(default ~/.cache/sdn_tf or $SDN_TF_DATA_DIR).")
    flags.DEFINE_integer("image_size", 64,
                         "Side of the square training images in pixels: a multiple of 32 "
                         "from 64 to 224 (the paper uses 224).")
    flags.register_validator(
        "image_size", _is_multiple_of_32_in_range,
        message="--image_size must be a multiple of 32 from 64 to 224 (64, 96, 128, ..., 224).")
    flags.DEFINE_list("train_classes", [],
                      "Oxford-102 only: training classes (numbers or class_000LL names, "
                      "comma-separated) when the data has no filenames.pickle split.")
    flags.DEFINE_list("test_classes", [],
                      "Oxford-102 only: test classes, as for --train_classes; with only one "
                      "of the two, the other split takes the remaining classes.")
    flags.DEFINE_enum("crop", "none", ("none", "bbox"),
                      "none: resize the whole image as SDN does; bbox: crop CUB to 1.5x "
                      "its bounding box first, as StackGAN does.")


def define_teacher_flags() -> None:
    """Flags of the frozen VGG19 teacher."""
    flags.DEFINE_string("teacher_weights", "imagenet",
                        "VGG19 weights: imagenet (downloaded once into the Keras cache), "
                        "random (tests and offline smoke runs), or the path of a local "
                        "VGG19 notop weights .h5 file.")
    flags.DEFINE_enum("teacher_preset", "released_code", ("released_code", "keras"),
                      "released_code: average pooling, raw 0-255 BGR input, as the "
                      "authors' code ran; keras: max pooling and Keras' VGG19 "
                      "preprocess_input.")


def define_run_flags() -> None:
    """Flags of every training program: workdir, schedule, precision."""
    flags.DEFINE_string("workdir", None,
                        "Run directory: checkpoints, TensorBoard logs and config.json. "
                        "Rerunning with the same workdir resumes from its newest checkpoint.")
    flags.mark_flag_as_required("workdir")
    flags.DEFINE_integer("batch_size", 12, "Examples per training step (global batch).",
                         lower_bound=1)
    flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.", lower_bound=0.0)
    flags.DEFINE_integer("epochs", 100, "Epochs to train; one epoch visits every "
                         "(image, caption) pair once.", lower_bound=0)
    flags.DEFINE_integer("max_steps", 0, "Stop after this many steps in total (0: no "
                         "limit beyond --epochs).", lower_bound=0)
    flags.DEFINE_integer("log_every", 50, "Log losses and examples/s every N steps.",
                         lower_bound=1)
    flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every N steps and "
                         "at the end.", lower_bound=1)
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in the workdir.",
                         lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed for initialisation and data order.")
    flags.DEFINE_enum("precision", "auto", PRECISIONS,
                      "auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs with bf16 "
                      "instructions, float32 elsewhere.")
    flags.DEFINE_enum("on_nan", "stop", ("stop", "restore"),
                      "After a NaN or infinite loss (whose update is never applied): stop "
                      "with the step and the non-finite loss parts, or restore the newest "
                      "checkpoint and continue.")
    flags.DEFINE_integer("max_nan_restores", 3, "Restores allowed by --on_nan=restore "
                         "before the run stops.", lower_bound=0)
    flags.DEFINE_enum("jit_compile", "auto", ("auto", "true", "false"),
                      "XLA compilation of the training step; auto: on GPU only.")


def define_sdn_flags() -> None:
    """Flags of sdn-train: stage, text embeddings, loss weights."""
    flags.DEFINE_enum("stage", "1", ("1", "2"),
                      "1: Stage-I, generator taps matched to teacher taps of the real "
                      "image; 2: Stage-II, teacher taps of the generated image matched "
                      "to those of the real image.")
    flags.DEFINE_enum("scheme", "sdn", SCHEMES,
                      "Loss terms to train, as in the SDN ablation: sdn (the --stage "
                      "loss), image_only, stage1 (Stage-I loss only), stage2 (Stage-II "
                      "loss only, from scratch), stage1_plus_stage2 (image term and both "
                      "tap sums from the start) or diverse (the --stage loss with "
                      "--num_images of 2 or more).")
    flags.DEFINE_string("init_from", None,
                        "Workdir of a finished run whose generator weights start this one "
                        "(Stage-II starts from the Stage-I result).")
    flags.DEFINE_string("text_encoder", None,
                        "Workdir of an sdn-train-text run whose encoder embeds the captions.")
    flags.DEFINE_enum("text_embeddings", "encoder", ("encoder", "pickle"),
                      "encoder: embed captions with --text_encoder; pickle: use the "
                      "dataset's char-CNN-RNN-embeddings.pickle as the released code did.")
    flags.DEFINE_string("tap_weights", "",
                        "Per-tap loss weights as TAP=WEIGHT pairs separated by commas, "
                        "for example conv1_1=0.5,pool5=2; unlisted taps weigh 1.")
    flags.register_validator("tap_weights", _validate_tap_weights)
    flags.DEFINE_float("image_weight", 1.0, "Weight of the image term.", lower_bound=0.0)
    flags.DEFINE_integer("num_images", 1, "Images per caption (diverse synthesis when > 1).",
                         lower_bound=1)
    flags.DEFINE_bool("init_image_bias", False,
                      "Start the generator's output bias at the mean training colour "
                      "instead of zero (the released code's choice); shortens short runs.")
    flags.DEFINE_enum("generator_init", "released", GENERATOR_INITS,
                      "Generator kernels: released (N(0, 0.02) conv, N(0, 0.1) dense, as "
                      "the authors' code) or he (He-normal in every ReLU layer, which "
                      "learns much faster in short runs).")
    flags.DEFINE_float("image_gain", 1.0, "Fixed factor on the generator's output image; 1 "
                       "is the released model. 64 lets a short run reach the 0-255 pixel "
                       "scale quickly. Stage-II must use its Stage-I run's value.",
                       lower_bound=1e-6)
    flags.DEFINE_bool("normalise_embeddings", False,
                      "Centre the caption embeddings and scale them to unit variance (fixed "
                      "statistics of the training captions, stored with the generator) "
                      "before g_fc7. The released code feeds them unchanged.")
    flags.DEFINE_bool("whiten_embeddings", False,
                      "Like --normalise_embeddings, and also decorrelate the caption "
                      "embeddings with a fixed, shrunk ZCA whitening, so that attributes "
                      "that explain little of their variance are learned as fast as the "
                      "others. Replaces --normalise_embeddings; Stage-II must use its "
                      "Stage-I run's choice.")
    flags.DEFINE_enum("strategy", "default", STRATEGIES,
                      "tf.distribute strategy: default (one device), mirrored (every GPU, or "
                      "every logical CPU device), multi_worker (MultiWorkerMirroredStrategy, "
                      "cluster from TF_CONFIG). --batch_size stays the global batch.")
    flags.DEFINE_integer("sample_every", 500, "Write image grids of fixed training and "
                         "held-out captions to TensorBoard every N steps.", lower_bound=1)
    flags.DEFINE_bool("cache_teacher_taps", False,
                      "Compute the teacher's taps of every training image once and keep them "
                      "in memory, which spares one teacher pass per step. Needs 2.7 MB per "
                      "image at 64x64 in bfloat16 (33 MB at 224). Rejected when that exceeds "
                      "40 % of the machine's memory, and with --strategy other than default.")
    flags.DEFINE_enum("background_checkpoints", "auto", ("auto", "true", "false"),
                      "Write checkpoints on a background thread from a copy of the generator "
                      "and optimizer in host memory (as large as the checkpoint), so training "
                      "goes on while they are written. auto: on GPU only, because on a CPU "
                      "the write takes cores from training and saves little.")


def _validate_tap_weights(text: str) -> bool:
    try:
        parse_tap_weights(text)
    except ValueError as error:
        raise flags.ValidationError(f"--tap_weights={text!r}: {error}") from None
    return True
