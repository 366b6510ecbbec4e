"""Prepare a dataset as sharded TFRecords of images resized to the training size.

  python tools/prepare_dataset.py --dataset=cub --data_dir=data/birds \
      --output_dir=data/cub-224 --image_size=224 --crop=none --shards=8

Every image is decoded and checked first; unreadable ones are left out and listed
with their reason in <output_dir>/manifest.json, which also contains the SHA-256
of every shard and image. Train from the result with
`sdn-train --dataset=tfrecord --data_dir=<output_dir>`.
"""

from absl import app, flags

from sdn_tf.data import tfrecords

FLAGS = flags.FLAGS

flags.DEFINE_enum("dataset", None, tfrecords.SOURCE_DATASETS, "Dataset layout to read.")
flags.DEFINE_string("data_dir", None,
                    "Folder of the source dataset. For shapes: a folder written by "
                    "build_shapes, or empty for the default cache.")
flags.DEFINE_string("output_dir", None, "Prepared folder to create; it must not exist "
                    "unless --overwrite is given.")
flags.DEFINE_integer("image_size", 224, "Side of the stored square images in pixels; "
                     "training may use this size or a smaller one.", lower_bound=1)
flags.DEFINE_enum("crop", "none", tfrecords.CROPS,
                  "none: resize the whole image, as SDN does; bbox: crop to 1.5 times the "
                  "bounding box first, as StackGAN does for CUB.")
flags.DEFINE_integer("shards", 8, "TFRecord files per split.", lower_bound=1)
flags.DEFINE_enum("image_format", "jpeg", tfrecords.IMAGE_FORMATS,
                  "Encoding of the stored images; png is lossless and larger.")
flags.DEFINE_integer("jpeg_quality", tfrecords.DEFAULT_JPEG_QUALITY,
                     "JPEG quality from 1 to 100.", lower_bound=1, upper_bound=100)
flags.DEFINE_list("splits", ["train", "test"], "Splits to prepare, separated by commas.")
flags.DEFINE_bool("embeddings", False, "Store the char-CNN-RNN-embeddings.pickle rows "
                  "of each split with its images (cub and flowers only).")
flags.DEFINE_bool("overwrite", False, "Replace an existing prepared folder.")
flags.mark_flags_as_required(["dataset", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    try:
        tfrecords.prepare_dataset(
            FLAGS.dataset, FLAGS.data_dir, FLAGS.output_dir, image_size=FLAGS.image_size,
            crop=FLAGS.crop, shards=FLAGS.shards, image_format=FLAGS.image_format,
            jpeg_quality=FLAGS.jpeg_quality, splits=FLAGS.splits,
            use_embeddings=FLAGS.embeddings, overwrite=FLAGS.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"prepare_dataset: {error}") from None


if __name__ == "__main__":
    app.run(main)
