"""sdn-train on the user-facing dataset layouts: CUB with precomputed embeddings, folders."""

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from sdn_tf.train import GENERATOR_WEIGHTS, SDNConfig, train

NAMES = [f"{1 + i // 3:03d}.Bird_{i // 3}/Bird_{i // 3}_{i:04d}" for i in range(6)]


def write_cub(root, split, names, rng):
    """Write a StackGAN-layout CUB split with Python-2 protocol pickles."""
    os.makedirs(root / split, exist_ok=True)
    with open(root / split / "filenames.pickle", "wb") as file:
        pickle.dump(names, file, protocol=2)
    with open(root / split / "class_info.pickle", "wb") as file:
        pickle.dump([int(name[:3]) for name in names], file, protocol=2)
    with open(root / split / "char-CNN-RNN-embeddings.pickle", "wb") as file:
        pickle.dump(rng.normal(size=(len(names), 10, 1024)).astype(np.float32), file,
                    protocol=2)
    for name in names:
        image_path = root / "CUB_200_2011" / "images" / f"{name}.jpg"
        os.makedirs(image_path.parent, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(image_path)
        caption_path = root / "text_c10" / f"{name}.txt"
        os.makedirs(caption_path.parent, exist_ok=True)
        caption_path.write_text("\n".join(f"caption {k} of {name}" for k in range(10)) + "\n")


def tiny_config(workdir, **overrides):
    settings = dict(workdir=str(workdir), teacher_weights="random", batch_size=4, epochs=1,
                    max_steps=2, log_every=1, checkpoint_every=2, sample_every=2,
                    precision="float32")
    settings.update(overrides)
    return SDNConfig(**settings)


def test_cub_with_pickle_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    write_cub(tmp_path / "birds", "train", NAMES[:4], rng)
    write_cub(tmp_path / "birds", "test", NAMES[4:], rng)
    losses = train(tiny_config(tmp_path / "run", dataset="cub", data_dir=str(tmp_path / "birds"),
                               text_embeddings="pickle"))
    assert np.isfinite(losses["loss"])
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["embedding_dim"] == 1024
    assert (tmp_path / "run" / GENERATOR_WEIGHTS).is_file()


def test_folder_rejects_pickle_embeddings(tmp_path):
    folder = tmp_path / "photos"
    os.makedirs(folder)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="--dataset=folder"):
        train(tiny_config(tmp_path / "run", dataset="folder", data_dir=str(folder),
                          text_embeddings="pickle"))


def test_flowers_folder_trains(tmp_path, shared_data):
    """Two steps on real Oxford-102 photographs read through metadata.jsonl."""
    labels = (shared_data / "flowers102" / "imagelabels.csv").read_text().splitlines()[1:13]
    folder = tmp_path / "flowers"
    os.makedirs(folder)
    rng = np.random.default_rng(1)
    lines = []
    for row in labels:
        image, label, class_name = row.split(",", 2)
        os.symlink(shared_data / "flowers102" / "jpg" / f"{image}.jpg", folder / f"{image}.jpg")
        lines.append(json.dumps({"file_name": f"{image}.jpg", "text": [f"a photo of a {class_name}"],
                                 "class_id": int(label)}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    from sdn_tf.data.records import ImageRecord
    from sdn_tf.data.readers import read_folder

    records = read_folder(str(folder))
    assert len(records) == 12
    with_embeddings = [ImageRecord(**{**r.__dict__, "embeddings": rng.normal(
        size=(len(r.captions), 16)).astype(np.float32)}) for r in records]
    losses = train(tiny_config(tmp_path / "run", dataset="folder", data_dir=str(folder),
                               text_embeddings="pickle"), with_embeddings, with_embeddings[:2])
    assert np.isfinite(losses["loss"])


def test_flowers_layout_trains(tmp_path, shared_data):
    """Two steps on real Oxford-102 photographs in the StackGAN flowers layout."""
    rows = (shared_data / "flowers102" / "imagelabels.csv").read_text().splitlines()[1:]
    by_class = {}
    for row in rows:
        image, label, _ = row.split(",", 2)
        by_class.setdefault(int(label), []).append(image)
    labels = sorted(by_class)[:2]
    root = tmp_path / "flowers"
    os.makedirs(root / "jpg")
    rng = np.random.default_rng(2)
    for split, label in (("train", labels[0]), ("test", labels[1])):
        images = by_class[label][:4]
        os.makedirs(root / split)
        with open(root / split / "filenames.pickle", "wb") as file:
            pickle.dump([f"jpg/{image}" for image in images], file, protocol=2)
        with open(root / split / "class_info.pickle", "wb") as file:
            pickle.dump([label] * len(images), file, protocol=2)
        with open(root / split / "char-CNN-RNN-embeddings.pickle", "wb") as file:
            pickle.dump(rng.normal(size=(len(images), 10, 1024)).astype(np.float32), file,
                        protocol=2)
        for image in images:
            os.symlink(shared_data / "flowers102" / "jpg" / f"{image}.jpg",
                       root / "jpg" / f"{image}.jpg")
            caption_path = root / "text_c10" / f"class_{label:05d}" / f"{image}.txt"
            os.makedirs(caption_path.parent, exist_ok=True)
            caption_path.write_text("\n".join(f"flower caption {k}" for k in range(10)) + "\n")
    losses = train(tiny_config(tmp_path / "run", dataset="flowers", data_dir=str(root),
                               text_embeddings="pickle"))
    assert np.isfinite(losses["loss"])
    assert (tmp_path / "run" / GENERATOR_WEIGHTS).is_file()


def test_flowers_split_from_class_flags(tmp_path, shared_data):
    from sdn_tf.data.datasets import load_split

    rows = (shared_data / "flowers102" / "imagelabels.csv").read_text().splitlines()[1:]
    root = tmp_path / "flowers"
    os.makedirs(root / "jpg")
    per_class = {}
    for row in rows:
        per_class.setdefault(row.split(",")[1], []).append(row)
    chosen = [row for label in sorted(per_class)[:3] for row in per_class[label][:10]]
    labels = {}
    for row in chosen:
        image, label, _ = row.split(",", 2)
        labels[image] = int(label)
        os.symlink(shared_data / "flowers102" / "jpg" / f"{image}.jpg", root / "jpg" / f"{image}.jpg")
        caption_path = root / "text_c10" / f"class_{int(label):05d}" / f"{image}.txt"
        os.makedirs(caption_path.parent, exist_ok=True)
        caption_path.write_text("a flower\n")
    train_class, *others = sorted(set(labels.values()))
    classes = {"train_classes": [str(train_class)], "test_classes": []}
    train_records = load_split("flowers", str(root), "train", class_lists=classes)
    test_records = load_split("flowers", str(root), "test", class_lists=classes)
    assert {r.class_id for r in train_records} == {train_class}
    assert {r.class_id for r in test_records} == set(others)
    assert len(train_records) + len(test_records) == 30


def test_class_flags_rejected_for_cub(tmp_path):
    from sdn_tf.data.datasets import load_split

    with pytest.raises(ValueError, match="--dataset=cub"):
        load_split("cub", str(tmp_path), "train", class_lists={"train_classes": ["1"]})
