"""Write a captioned image folder from class labels alone, for data without captions.

  python tools/class_captions.py --labels=flowers102/imagelabels.csv \
      --images=flowers102/jpg --out=runs/flowers16 --num_test_classes=4

`--labels` is a CSV file with the columns image, label and class_name (the file
name without extension, the class number and its name), as Oxford-102's
imagelabels.csv. Each image gets NUM_CAPTIONS captions made from templates
that name its class, and the classes are split class-disjointly into
OUT/train/metadata.jsonl and OUT/test/metadata.jsonl, which sdn-train-text,
sdn-train and sdn-eval read with --dataset=folder --data_dir=OUT.

These captions carry the class name only, never what one photograph shows, so
a model trained on them learns one image per class. They let the pipeline and
the metrics run on real photographs when the human-written captions of Reed
et al. (2016) are not at hand; they are no substitute for them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS

flags.DEFINE_string("labels", None, "CSV file with columns image, label, class_name.")
flags.DEFINE_string("images", None, "Folder with the images named in --labels.")
flags.DEFINE_string("extension", ".jpg", "File name extension appended to each image name.")
flags.DEFINE_string("out", None, "Output folder; gets train/ and test/ metadata.jsonl.")
flags.DEFINE_integer("num_test_classes", 4, "Number of classes held out for the test split "
                     "(the ones with the highest class numbers).", lower_bound=1)
flags.DEFINE_list("test_classes", [], "Class numbers of the test split; overrides "
                  "--num_test_classes.")

# {name} is the class name. Ten templates give ten distinct captions per image,
# as the caption files of Reed et al. have ten lines.
TEMPLATES = (
    "a photo of a {name}",
    "a {name} flower in bloom",
    "this flower is a {name}",
    "a close-up picture of a {name}",
    "the petals of a {name}",
    "a single {name} seen from above",
    "an image showing a {name}",
    "a {name} growing outdoors",
    "this is a picture of a {name} flower",
    "a colourful {name}",
)
NUM_CAPTIONS = len(TEMPLATES)


def read_labels(path: str) -> list:
    """Return [(image, label, class_name)] from the CSV file, in file order."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--labels={path} does not exist; pass a CSV file with the "
                                "columns image, label, class_name.")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image", "label", "class_name"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; its header is "
                             f"{reader.fieldnames}. Expected image,label,class_name.")
        for line_number, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {line_number}: label {row['label']!r} is not "
                                 "an integer class number.") from None
            name = (row["class_name"] or "").strip()
            if not name:
                raise ValueError(f"{path} line {line_number}: empty class_name for image "
                                 f"{row['image']!r}.")
            rows.append((row["image"].strip(), label, name))
    if not rows:
        raise ValueError(f"{path} has a header but no rows.")
    return rows


def captions_for(class_name: str) -> list:
    """Return the NUM_CAPTIONS captions of a class, with "an" before a vowel."""
    captions = [template.format(name=class_name) for template in TEMPLATES]
    return [re.sub(r"\ba (?=[aeiou])", "an ", caption) for caption in captions]


def choose_test_classes(labels: list, test_classes: list, num_test_classes: int) -> set:
    classes = sorted({label for _, label, _ in labels})
    if test_classes:
        chosen = {int(value) for value in test_classes}
        unknown = sorted(chosen - set(classes))
        if unknown:
            raise ValueError(f"--test_classes={','.join(map(str, sorted(chosen)))}: classes "
                             f"{unknown} have no images; the labels hold {classes}.")
    else:
        chosen = set(classes[-num_test_classes:])
    if len(chosen) >= len(classes):
        raise ValueError(f"{len(chosen)} test classes leave no training class out of "
                         f"{len(classes)}; hold out fewer.")
    return chosen


def write_split(out: str, split: str, rows: list, images: str, extension: str) -> int:
    """Write OUT/<split>/metadata.jsonl atomically; return the number of images."""
    folder = os.path.join(out, split)
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, "metadata.jsonl")
    temporary = target + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        for image, label, name in rows:
            path = os.path.join(os.path.abspath(images), image + extension)
            f.write(json.dumps({"file_name": os.path.relpath(path, folder),
                                "text": captions_for(name), "class_id": label}) + "\n")
    os.replace(temporary, target)
    return len(rows)


def main(argv):
    del argv
    for name in ("labels", "images", "out"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required.")
    if not os.path.isdir(FLAGS.images):
        raise FileNotFoundError(f"--images={FLAGS.images} is not a folder.")
    labels = read_labels(FLAGS.labels)
    missing = [image for image, _, _ in labels
               if not os.path.isfile(os.path.join(FLAGS.images, image + FLAGS.extension))]
    if missing:
        # Listed but absent images are reported, not dropped silently: the
        # readers would skip them later with a count, but the user should know now.
        logging.warning("%d of %d listed images are not in %s (first: %s); they are left out.",
                        len(missing), len(labels), FLAGS.images, missing[0] + FLAGS.extension)
        missing_set = set(missing)
        labels = [row for row in labels if row[0] not in missing_set]
    test_classes = choose_test_classes(labels, FLAGS.test_classes, FLAGS.num_test_classes)
    train_rows = [row for row in labels if row[1] not in test_classes]
    test_rows = [row for row in labels if row[1] in test_classes]
    counts = {split: write_split(FLAGS.out, split, rows, FLAGS.images, FLAGS.extension)
              for split, rows in (("train", train_rows), ("test", test_rows))}
    names = sorted({(label, name) for _, label, name in test_rows})
    logging.info("Wrote %d training and %d test images (%d captions each) to %s; test "
                 "classes %s.", counts["train"], counts["test"], NUM_CAPTIONS, FLAGS.out,
                 ", ".join(f"{label} {name}" for label, name in names))
    print(json.dumps({"train_images": counts["train"], "test_images": counts["test"],
                      "skipped_missing": len(missing),
                      "test_classes": sorted(test_classes)}))


if __name__ == "__main__":
    sys.exit(app.run(main))
