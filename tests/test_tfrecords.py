"""Prepared TFRecord folders: writing, the manifest, reading back, damage, training."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sdn_tf.data import pipeline, shapes, tfrecords
from sdn_tf.data.datasets import load_split
from sdn_tf.data.records import SkipReport
from sdn_tf.train import SDNConfig, train



@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    return shapes.build_shapes(root=root, image_size=64, images_per_class_train=2,
                               images_per_class_test=1)


@pytest.fixture(scope="module")
def prepared(shapes_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("prepared") / "shapes-64"
    manifest = tfrecords.prepare_dataset("shapes", shapes_root, output, image_size=64,
                                         shards=3, image_format="png")
    return output, manifest


@pytest.fixture
def damaged_copy(prepared, tmp_path):
    """A copy of the prepared folder that a test may damage."""
    folder = tmp_path / "copy"
    shutil.copytree(prepared[0], folder)
    return folder


def _raw_images(shard_path) -> list[bytes]:
    images = []
    for serialized in tf.data.TFRecordDataset(str(shard_path)).as_numpy_iterator():
        feature = tf.train.Example.FromString(serialized).features.feature
        images.append(feature["image/encoded"].bytes_list.value[0])
    return images


def _flip_byte_in_item(folder, manifest, split, name):
    """Flip one byte in the middle of item `name`'s encoded image inside its shard."""
    item = manifest["splits"][split]["items"][name]
    shard_path = folder / manifest["splits"][split]["shards"][item["shard"]]["file"]
    encoded = _raw_images(shard_path)[item["index"]]
    data = bytearray(shard_path.read_bytes())
    offset = data.find(encoded) + len(encoded) // 2
    data[offset] ^= 0x01
    shard_path.write_bytes(bytes(data))
    return shard_path


def _write_folder_dataset(root: Path) -> None:
    """Four good images, a zero-byte file, a truncated JPEG and a missing file."""
    root.mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
            root / f"good{index}.jpg", quality=90)
        lines.append({"file_name": f"good{index}.jpg", "text": [f"caption {index} a",
                                                                 f"caption {index} b"],
                      "class_id": index % 2})
    (root / "empty.jpg").write_bytes(b"")
    whole = (root / "good0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    for name in ("empty.jpg", "truncated.jpg", "missing.jpg"):
        lines.append({"file_name": name, "text": "a caption"})
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as file:
        for line in lines:
            file.write(json.dumps(line) + "\n")


def test_manifest_counts_match(prepared, shapes_root):
    _, manifest = prepared
    for split in ("train", "test"):
        records = shapes.load_shapes_split(shapes_root, split)
        info = manifest["splits"][split]
        assert info["images"] == len(records)
        assert info["captions"] == sum(len(r.captions) for r in records)
        assert info["classes"] == sorted({r.class_id for r in records})
        assert len(info["items"]) == len(records)
        assert sum(shard["images"] for shard in info["shards"]) == len(records)
        assert info["skipped"] == []


def test_manifest_settings(prepared, shapes_root):
    folder, manifest = prepared
    stored = json.loads((folder / tfrecords.MANIFEST_FILE).read_text())
    assert stored == manifest
    assert stored["dataset"] == "shapes"
    assert stored["source_dir"] == os.path.abspath(shapes_root)
    assert (stored["image_size"], stored["crop"], stored["image_format"]) == (64, "none", "png")


def test_shard_files_and_hashes(prepared):
    folder, manifest = prepared
    shards = manifest["splits"]["train"]["shards"]
    assert [s["file"] for s in shards] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    for shard in shards:
        assert tfrecords.sha256_file(folder / shard["file"]) == shard["sha256"]


def test_round_trip_captions(prepared, shapes_root):
    folder, _ = prepared
    original = shapes.load_shapes_split(shapes_root, "train")
    loaded = tfrecords.read_tfrecord_split(folder, "train")
    assert [r.name for r in loaded] == [r.name for r in original]
    assert [tuple(r.captions) for r in loaded] == [tuple(r.captions) for r in original]
    assert [r.class_id for r in loaded] == [r.class_id for r in original]
    attributes = [{k: v for k, v in r.attributes.items() if k != tfrecords.TFRECORD_INDEX}
                  for r in loaded]
    assert attributes == [r.attributes for r in original]


def test_round_trip_image_bytes(prepared):
    folder, manifest = prepared
    info = manifest["splits"]["test"]
    by_location = {(item["shard"], item["index"]): item["sha256"]
                   for item in info["items"].values()}
    for shard, entry in enumerate(info["shards"]):
        for index, encoded in enumerate(_raw_images(folder / entry["file"])):
            assert tfrecords.sha256_bytes(encoded) == by_location[(shard, index)]


def test_png_images_equal_source(prepared, shapes_root):
    # PNG is lossless and the shapes images are already 64x64, so the stored images
    # must equal what training decodes from the source files.
    folder, _ = prepared
    original = shapes.load_shapes_split(shapes_root, "train")
    loaded = tfrecords.read_tfrecord_split(folder, "train")
    expected = pipeline.load_images(original, 64)
    actual = pipeline.load_images(loaded, 64)
    np.testing.assert_array_equal(actual, expected)


def test_jpeg_images_close_to_source(shapes_root, tmp_path):
    output = tmp_path / "jpeg"
    tfrecords.prepare_dataset("shapes", shapes_root, output, image_size=64, shards=1,
                              splits=("test",))
    original = shapes.load_shapes_split(shapes_root, "test")
    expected = pipeline.load_images(original, 64).astype(np.float32)
    actual = pipeline.load_images(tfrecords.read_tfrecord_split(output, "test"), 64)
    # One JPEG encode at the default quality is the floor: the prepared images
    # must lose no more than that, so nothing is resized or encoded twice.
    once = np.stack([
        tf.io.decode_jpeg(tf.io.encode_jpeg(image.astype(np.uint8),
                                            quality=tfrecords.DEFAULT_JPEG_QUALITY)).numpy()
        for image in expected]).astype(np.float32)
    floor = np.abs(once - expected).mean()
    error = np.abs(actual - expected).mean()
    assert error <= 1.1 * floor + 0.1
    assert error < 4.0


def test_subset_out_of_order(prepared):
    folder, _ = prepared
    loaded = tfrecords.read_tfrecord_split(folder, "train")
    everything = pipeline.load_images(loaded, 64)
    picked = [loaded[-1], loaded[0], loaded[-1]]
    images = pipeline.load_images(picked, 64)
    np.testing.assert_array_equal(images, everything[[-1, 0, -1]])


def test_smaller_size_resizes(prepared):
    folder, _ = prepared
    images = pipeline.load_images(tfrecords.read_tfrecord_split(folder, "test"), 32)
    assert images.shape[1:] == (32, 32, 3)


def test_larger_size_rejected(prepared):
    folder, _ = prepared
    records = tfrecords.read_tfrecord_split(folder, "test")
    with pytest.raises(ValueError, match="--image_size=96"):
        pipeline.load_images(records, 96)


def test_crop_mismatch_rejected(prepared):
    folder, _ = prepared
    records = tfrecords.read_tfrecord_split(folder, "test")
    with pytest.raises(ValueError, match="prepared with crop=none"):
        pipeline.load_images(records, 64, crop_to_bbox=True)


def test_bbox_crop_without_boxes(shapes_root, tmp_path):
    with pytest.raises(ValueError, match="needs bounding boxes"):
        tfrecords.prepare_dataset("shapes", shapes_root, tmp_path / "out", image_size=64,
                                  crop="bbox")
    assert not (tmp_path / "out").exists()


def test_bbox_crop_matches_pipeline(shapes_root, tmp_path):
    original = shapes.load_shapes_split(shapes_root, "test")
    boxed = [dataclasses.replace(r, bbox=(8, 4, 30, 24 + i)) for i, r in enumerate(original)]
    records = [boxed[0], dataclasses.replace(original[1], bbox=None)] + boxed[2:]
    manifest = tfrecords.write_prepared(tmp_path / "out", {"test": (records, SkipReport())},
                                        image_size=64, crop="bbox", image_format="png")
    skipped = manifest["splits"]["test"]["skipped"]
    assert skipped == [{"name": original[1].name, "reason": tfrecords.NO_BBOX}]
    kept = [boxed[0]] + boxed[2:]
    loaded = tfrecords.read_tfrecord_split(tmp_path / "out", "test")
    assert [r.name for r in loaded] == [r.name for r in kept]
    expected = pipeline.load_images(kept, 64, crop_to_bbox=True)
    np.testing.assert_array_equal(pipeline.load_images(loaded, 64, crop_to_bbox=True),
                                  expected)


def test_undecodable_image_skipped(shapes_root, tmp_path):
    # write_prepared takes records that no reader validated, so TensorFlow meets the
    # bad file itself.
    records = shapes.load_shapes_split(shapes_root, "test")
    (tmp_path / "empty.png").write_bytes(b"")
    records[3] = dataclasses.replace(records[3], image_path=str(tmp_path / "empty.png"))
    manifest = tfrecords.write_prepared(tmp_path / "out", {"test": (records, SkipReport())},
                                        image_size=64, shards=2)
    info = manifest["splits"]["test"]
    assert info["skipped"] == [{"name": records[3].name,
                                "reason": tfrecords.NOT_DECODABLE_BY_TF}]
    assert info["images"] == len(records) - 1
    loaded = tfrecords.read_tfrecord_split(tmp_path / "out", "test")
    assert [r.name for r in loaded] == [r.name for i, r in enumerate(records) if i != 3]


def test_folder_skips_listed(tmp_path):
    source = tmp_path / "source"
    _write_folder_dataset(source)
    manifest = tfrecords.prepare_dataset("folder", source, tmp_path / "out", image_size=32,
                                         shards=2, splits=("train",))
    info = manifest["splits"]["train"]
    skipped = {item["name"]: item["reason"] for item in info["skipped"]}
    assert skipped == {"empty.jpg": "empty image file", "truncated.jpg": "truncated image",
                       "missing.jpg": "image file not found"}
    assert info["skipped_counts"] == {"empty image file": 1, "truncated image": 1,
                                      "image file not found": 1}
    assert info["images"] == 4
    assert info["captions"] == 8
    assert sorted(info["items"]) == [f"good{i}.jpg" for i in range(4)]


def test_folder_round_trip(tmp_path):
    source = tmp_path / "source"
    _write_folder_dataset(source)
    tfrecords.prepare_dataset("folder", source, tmp_path / "out", image_size=32,
                              splits=("train",))
    records = tfrecords.read_tfrecord_split(tmp_path / "out", "train")
    assert [r.captions for r in records] == [(f"caption {i} a", f"caption {i} b")
                                            for i in range(4)]
    assert [r.class_id for r in records] == [0, 1, 0, 1]
    assert pipeline.load_images(records, 32).shape == (4, 32, 32, 3)


def test_embeddings_round_trip(shapes_root, tmp_path):
    rng = np.random.default_rng(0)
    records = [dataclasses.replace(r, embeddings=rng.normal(size=(len(r.captions), 8))
                                   .astype(np.float32))
               for r in shapes.load_shapes_split(shapes_root, "test")]
    manifest = tfrecords.write_prepared(tmp_path / "out", {"test": (records, SkipReport())},
                                        image_size=64)
    loaded = tfrecords.read_tfrecord_split(tmp_path / "out", "test")
    assert manifest["splits"]["test"]["embedding_dim"] == 8
    for before, after in zip(records, loaded):
        np.testing.assert_array_equal(after.embeddings, before.embeddings)


def test_damaged_shard_names_item(prepared, damaged_copy):
    _, manifest = prepared
    name = list(manifest["splits"]["train"]["items"])[5]
    shard_path = _flip_byte_in_item(damaged_copy, manifest, "train", name)
    with pytest.raises(tfrecords.ChecksumError) as caught:
        tfrecords.read_tfrecord_split(damaged_copy, "train")
    message = str(caught.value)
    assert str(shard_path) in message
    assert repr(name) in message


def test_damage_after_reading_records(prepared, damaged_copy):
    # Damage that appears after the records were read is caught when the images load.
    _, manifest = prepared
    records = tfrecords.read_tfrecord_split(damaged_copy, "test")
    name = records[-1].name
    shard_path = _flip_byte_in_item(damaged_copy, manifest, "test", name)
    with pytest.raises(tfrecords.ChecksumError) as caught:
        pipeline.load_images(records, 64)
    message = str(caught.value)
    assert str(shard_path) in message
    assert repr(name) in message


def test_manifest_item_hash_mismatch(prepared, damaged_copy):
    _, manifest = prepared
    name = list(manifest["splits"]["test"]["items"])[0]
    edited = json.loads((damaged_copy / tfrecords.MANIFEST_FILE).read_text())
    edited["splits"]["test"]["items"][name]["sha256"] = "0" * 64
    (damaged_copy / tfrecords.MANIFEST_FILE).write_text(json.dumps(edited))
    with pytest.raises(tfrecords.ChecksumError, match="differ from the SHA-256") as caught:
        tfrecords.read_tfrecord_split(damaged_copy, "test")
    assert repr(name) in str(caught.value)


def test_missing_split_named(prepared):
    folder, _ = prepared
    with pytest.raises(ValueError, match="Split 'validation' was not prepared"):
        tfrecords.read_tfrecord_split(folder, "validation")


def test_failure_leaves_no_folder(shapes_root, tmp_path, monkeypatch):
    calls = []
    original = tfrecords._serialize

    def failing_serialize(*args):
        calls.append(1)
        if len(calls) == 10:
            raise OSError("disk full (injected)")
        return original(*args)

    monkeypatch.setattr(tfrecords, "_serialize", failing_serialize)
    parent = tmp_path / "parent"
    parent.mkdir()
    with pytest.raises(OSError, match="injected"):
        tfrecords.prepare_dataset("shapes", shapes_root, parent / "out", image_size=64)
    assert list(parent.iterdir()) == []


def test_existing_output_kept(prepared, shapes_root):
    folder, manifest = prepared
    before = tfrecords.sha256_file(folder / tfrecords.MANIFEST_FILE)
    with pytest.raises(FileExistsError, match="--overwrite"):
        tfrecords.prepare_dataset("shapes", shapes_root, folder, image_size=64)
    assert tfrecords.sha256_file(folder / tfrecords.MANIFEST_FILE) == before


def test_overwrite_replaces(shapes_root, tmp_path):
    output = tmp_path / "out"
    tfrecords.prepare_dataset("shapes", shapes_root, output, image_size=64, shards=2,
                              splits=("test",))
    tfrecords.prepare_dataset("shapes", shapes_root, output, image_size=32, shards=1,
                              splits=("test",), overwrite=True)
    assert tfrecords.read_manifest(output)["image_size"] == 32
    assert sorted(p.name for p in output.iterdir()) == ["manifest.json",
                                                        "test-00000-of-00001.tfrecord"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_load_split_detects_folder(prepared):
    folder, manifest = prepared
    records = load_split("shapes", str(folder), "train")
    assert len(records) == manifest["splits"]["train"]["images"]
    assert all(tfrecords.is_tfrecord_record(r) for r in records)


def test_load_split_dataset_mismatch(prepared):
    folder, _ = prepared
    with pytest.raises(ValueError, match="--dataset=shapes or --dataset=tfrecord"):
        load_split("cub", str(folder), "train")


def test_tfrecord_without_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        load_split("tfrecord", str(tmp_path), "train")


def test_train_from_tfrecords(shapes_root, tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "test"):
        records = [dataclasses.replace(r, embeddings=rng.normal(size=(len(r.captions), 16))
                                       .astype(np.float32))
                   for r in shapes.load_shapes_split(shapes_root, split)]
        splits[split] = (records, SkipReport())
    tfrecords.write_prepared(tmp_path / "prepared", splits, image_size=64)
    config = SDNConfig(workdir=str(tmp_path / "run"), dataset="tfrecord",
                       data_dir=str(tmp_path / "prepared"), image_size=64,
                       teacher_weights="random", precision="float32",
                       text_embeddings="pickle", batch_size=4, max_steps=2, log_every=1,
                       checkpoint_every=2, sample_every=2)
    losses = train(config)
    assert np.isfinite(losses["loss"])
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["step"] == 2


def test_tool_prepares_folder(tmp_path, run_tool):
    source = tmp_path / "source"
    _write_folder_dataset(source)
    result = run_tool("prepare_dataset", "--dataset=folder", f"--data_dir={source}",
                       f"--output_dir={tmp_path / 'out'}", "--image_size=32", "--shards=2",
                       "--splits=train")
    assert result.returncode == 0, result.stderr
    manifest = tfrecords.read_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["images"] == 4
    assert "3 skipped" in result.stderr


def test_tool_rejects_existing_output(tmp_path, run_tool):
    (tmp_path / "out").mkdir()
    result = run_tool("prepare_dataset", "--dataset=shapes", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode != 0
    assert "already exists" in result.stderr
