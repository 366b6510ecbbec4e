"""Measure what a trained text encoder's caption embeddings carry, per shapes attribute.

  python tools/probe_embeddings.py --text_encoder=runs/shapes_quickstart/text

For each attribute a caption states (colour, shape, size, position,
background, background style), a linear probe (ridge regression on one-hot
targets, trained on every training caption) predicts the attribute from the
embedding. The tool prints the probe's accuracy on training captions and on
held-out ones, and the share of the embeddings' variance that lies between
the attribute's groups. A generator can only draw what a linear read-out of
its input can find, so a low colour accuracy points at the text encoder.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

ATTRIBUTES = ("colour", "shape", "size", "position", "background", "background_style")


def between_group_share(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Return the fraction of the total variance explained by the group means of `labels`."""
    centred = embeddings - embeddings.mean(axis=0)
    total = float(np.sum(centred ** 2))
    if total == 0.0:
        raise ValueError("the embeddings do not vary, so no variance share exists; check that "
                         "--text_encoder names a trained encoder.")
    between = 0.0
    for label in np.unique(labels):
        members = centred[labels == label]
        between += len(members) * float(np.sum(members.mean(axis=0) ** 2))
    return between / total


def linear_probe(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray,
                 test_labels: np.ndarray, ridge: float = 1.0) -> tuple:
    """Fit ridge regression on one-hot labels; return (train accuracy, test accuracy).

    Features are centred and scaled by the training set's root mean variance,
    so `ridge` means the same for any embedding scale.
    """
    classes = np.unique(train_labels)
    mean = train_x.mean(axis=0)
    scale = float(np.sqrt(train_x.var(axis=0).mean())) or 1.0

    def design(x):
        return np.c_[(x - mean) / scale, np.ones(len(x))]

    targets = (train_labels[:, None] == classes[None, :]).astype(np.float64)
    features = design(train_x)
    weights = np.linalg.solve(features.T @ features + ridge * np.eye(features.shape[1]),
                              features.T @ targets)

    def accuracy(x, labels):
        predicted = classes[np.argmax(design(x) @ weights, axis=1)]
        return float(np.mean(predicted == labels))

    return accuracy(train_x, train_labels), accuracy(test_x, test_labels)


def probe(train_embeddings, train_attributes, test_embeddings, test_attributes) -> dict:
    """Return {attribute: {train_accuracy, test_accuracy, between_group_share}}."""
    results = {}
    for name in ATTRIBUTES:
        train_labels = np.asarray([attributes[name] for attributes in train_attributes])
        test_labels = np.asarray([attributes[name] for attributes in test_attributes])
        train_accuracy, test_accuracy = linear_probe(train_embeddings, train_labels,
                                                     test_embeddings, test_labels)
        results[name] = {
            "train_accuracy": train_accuracy, "test_accuracy": test_accuracy,
            "between_group_share": between_group_share(train_embeddings, train_labels)}
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    from sdn_tf.data.datasets import load_split
    from sdn_tf.text.encoder import load_text_encoder

    encoder = load_text_encoder(FLAGS.text_encoder)
    splits = {}
    for split in ("train", "test"):
        records = load_split("shapes", FLAGS.data_dir, split)
        captions = [caption for record in records for caption in record.captions]
        attributes = [record.attributes for record in records for _ in record.captions]
        splits[split] = (encoder.embed(captions), attributes)
    results = probe(*splits["train"], *splits["test"])
    print(f"{'attribute':18s} {'train acc':>9s} {'test acc':>9s} {'variance share':>15s}")
    for name, row in results.items():
        print(f"{name:18s} {row['train_accuracy']:9.3f} {row['test_accuracy']:9.3f} "
              f"{row['between_group_share']:15.3f}")
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)


def define_flags() -> None:
    """Define the tool's flags; only when run as a program, so tests can import it."""
    flags.DEFINE_string("text_encoder", None, "Workdir of an sdn-train-text run on shapes.")
    flags.DEFINE_string("data_dir", None, "Folder of the shapes dataset (default: its cache).")
    flags.DEFINE_string("output", None, "Optional JSON file for the figures.")
    flags.mark_flag_as_required("text_encoder")


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
