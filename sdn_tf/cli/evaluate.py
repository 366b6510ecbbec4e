"""sdn-eval: the SDN paper's Table 1 metrics for a model written by sdn-export.

  sdn-eval --model=runs/export --dataset=shapes --output_dir=runs/eval
  sdn-eval --model=runs/cub_export --dataset=cub --data_dir=data/birds \
      --output_dir=runs/cub_eval --retrieval_figure=8

Writes metrics.json, metrics.md, samples.png and, with --retrieval_figure,
retrieval.png to --output_dir.
"""

from absl import app, flags

from sdn_tf.evaluate import INCEPTION_SPLITS, METRICS, R_PRECISION_MISMATCHED, EvalConfig, evaluate
from sdn_tf.cli.errors import run_program
from sdn_tf.folders import check_writable_folder

FLAGS = flags.FLAGS


def define_eval_flags() -> None:
    """Flags of sdn-eval."""
    # Imported here because they load TensorFlow, and the SSIM/FSIM worker
    # processes import this module without needing it.
    from sdn_tf import flags as sdn_flags
    from sdn_tf.teacher import TAP_NAMES

    flags.DEFINE_string("model", None, "SavedModel folder written by sdn-export.")
    flags.DEFINE_string("output_dir", None, "Folder for metrics.json, metrics.md and figures.")
    flags.mark_flags_as_required(["model", "output_dir"])
    flags.DEFINE_enum("dataset", "shapes", sdn_flags.DATASETS, "Dataset to evaluate on.")
    flags.DEFINE_string("data_dir", None, "Dataset folder (for shapes: where its cache is).")
    flags.DEFINE_enum("split", "test", ("train", "test"), "Split whose captions are evaluated.")
    flags.DEFINE_integer("images_per_caption", 1, "Images per caption, at most the model's "
                         "num_images (diverse synthesis draws several).", lower_bound=1)
    flags.DEFINE_integer("max_captions", 0, "Evaluate this many captions spread evenly over "
                         "the split, for quick runs (0: every caption).", lower_bound=0)
    flags.DEFINE_string("inception_weights", "imagenet",
                        "Inception-v3: imagenet (Keras weights, downloaded once), random "
                        "(smoke tests), the path of a Keras weights file, or a TF-Hub handle "
                        "or SavedModel folder.")
    flags.DEFINE_string("inception_hub_features", None, "TF-Hub Inception-v3 feature-vector "
                        "model for FID when --inception_weights is a TF-Hub classifier.")
    flags.DEFINE_list("skip", [], f"Metrics to leave out, from {', '.join(METRICS)}.")
    flags.register_validator("skip", lambda names: set(names) <= set(METRICS),
                             message=f"--skip takes names from {', '.join(METRICS)}.")
    flags.DEFINE_integer("splits", INCEPTION_SPLITS, "Splits of the Inception score and of "
                         "the R-precision standard deviation.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 32, "Captions per generator call and images per "
                         "Inception or teacher pass.", lower_bound=1)
    flags.DEFINE_integer("workers", 0, "Processes computing SSIM and FSIM (0: one per CPU).",
                         lower_bound=0)
    flags.DEFINE_enum("crop", "model", ("model", "none", "bbox"),
                      "How real images are cut before resizing: model (as the model was "
                      "trained), none (whole image) or bbox (1.5x the CUB bounding box).")
    flags.DEFINE_string("teacher_weights", None,
                        "VGG19 weights for the retrieval figure (imagenet, random or a "
                        "file); default: those the model was trained with.")
    flags.DEFINE_integer("retrieval_figure", 0, "Draw the nearest training images of the "
                         "first N evaluated captions' images to retrieval.png (0: no figure).",
                         lower_bound=0)
    flags.DEFINE_enum("retrieval_tap", "pool5", TAP_NAMES,
                      "Teacher tap whose spatially averaged features rank training images.")
    flags.DEFINE_integer("retrieval_k", 5, "Training images per generated image in the "
                         "retrieval figure.", lower_bound=1)
    flags.DEFINE_integer("r_precision_mismatched", R_PRECISION_MISMATCHED,
                         "Captions of other classes ranked against the true caption.",
                         lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of the mismatched captions drawn for R-precision.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    config = EvalConfig(
        model_dir=FLAGS.model, output_dir=FLAGS.output_dir, dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, split=FLAGS.split,
        images_per_caption=FLAGS.images_per_caption, max_captions=FLAGS.max_captions,
        inception_weights=FLAGS.inception_weights,
        inception_hub_features=FLAGS.inception_hub_features, skip=tuple(FLAGS.skip),
        splits=FLAGS.splits, batch_size=FLAGS.batch_size, workers=FLAGS.workers,
        crop=None if FLAGS.crop == "model" else FLAGS.crop,
        teacher_weights=FLAGS.teacher_weights, retrieval_figure=FLAGS.retrieval_figure,
        retrieval_tap=FLAGS.retrieval_tap, retrieval_k=FLAGS.retrieval_k,
        r_precision_mismatched=FLAGS.r_precision_mismatched, seed=FLAGS.seed)
    check_writable_folder(FLAGS.output_dir, "--output_dir")
    evaluate(config)


def run():
    define_eval_flags()
    run_program(main)


if __name__ == "__main__":
    run()
