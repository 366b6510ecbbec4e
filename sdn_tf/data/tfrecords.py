"""Prepared datasets: images resized once to the training size and stored as TFRecord shards.

A prepared folder contains, per split, `<split>-00000-of-00008.tfrecord` ... and one
`manifest.json` for the whole folder. Each tf.train.Example contains one image:

  image/encoded    the resized image, JPEG (default quality 95) or PNG
  image/format     b"jpeg" or b"png"
  image/file_name  base name of the source image file
  name             the record name (unique within the dataset)
  captions         every caption, UTF-8, in source order
  class_id         int64 class label
  embeddings       optional float32 caption embeddings, flattened, with
  embeddings/shape [num_captions, dim]
  attributes       optional JSON object of reader-specific facts (colour and shape for shapes)

The manifest records the source, the image size and crop, and per split the counts,
classes, shard files with their SHA-256, the SHA-256 of every item's encoded image
keyed by record name, and every item the readers or the encoder left out, with its reason.

`read_tfrecord_split` returns ImageRecords whose `image_path` is their shard and whose
`attributes[TFRECORD_INDEX]` is their position in it. `pipeline.load_images` hands such
records to `load_images` here, so training reads a prepared folder through the same code
path as image files. Both readers verify the SHA-256 sums and raise ChecksumError naming
the shard and the item on a mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from sdn_tf.data import pipeline
from sdn_tf.data.records import ImageRecord, SkipReport

MANIFEST_FILE = "manifest.json"
FORMAT_NAME = "sdn_tf.tfrecords"
FORMAT_VERSION = 1
IMAGE_FORMATS = ("jpeg", "png")
CROPS = ("none", "bbox")
DEFAULT_JPEG_QUALITY = 95
SOURCE_DATASETS = ("cub", "flowers", "folder", "shapes")

# Key of ImageRecord.attributes that marks a record read from a prepared folder: the
# record's position within its shard, which is its image_path.
TFRECORD_INDEX = "tfrecord_index"

# Skip reasons added by the preparation, next to the readers' own reasons.
NO_BBOX = "no bounding box"
NOT_DECODABLE_BY_TF = "image that TensorFlow cannot decode"

_REPAIR_HINT = ("Prepare the dataset again with tools/prepare_dataset.py, or restore the "
                "folder from a copy.")
_HASH_CHUNK_BYTES = 1 << 20


class ChecksumError(ValueError):
    """A shard or an item of a prepared folder does not match its manifest.json entry."""


def shard_file_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class _Settings:
    image_size: int
    crop: str
    shards: int
    image_format: str
    jpeg_quality: int


def _check_settings(image_size, crop, shards, image_format, jpeg_quality) -> _Settings:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"Invalid image_size {image_size!r}: use a positive number of pixels, "
                         "the training size (224 for SDN).")
    if crop not in CROPS:
        raise ValueError(f"Invalid crop {crop!r}: choose one of {', '.join(CROPS)}.")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"Invalid shards {shards!r}: use a positive number of files per split.")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"Invalid image_format {image_format!r}: choose one of "
                         f"{', '.join(IMAGE_FORMATS)}.")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"Invalid jpeg_quality {jpeg_quality!r}: use 1 to 100.")
    return _Settings(image_size, crop, shards, image_format, jpeg_quality)


def read_source_split(dataset: str, data_dir, split: str, skips: SkipReport,
                      use_embeddings: bool = False) -> list[ImageRecord]:
    """Read one split of a source dataset, decoding every image to skip unreadable ones.

    For "shapes", `data_dir` is a folder written by `shapes.build_shapes`, read as it
    is whatever its parameters; without data_dir the default cache is built or reused.
    """
    if dataset not in SOURCE_DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}: choose one of "
                         f"{', '.join(SOURCE_DATASETS)}.")
    if use_embeddings and dataset not in ("cub", "flowers"):
        raise ValueError(f"use_embeddings needs char-CNN-RNN-embeddings.pickle, which only "
                         f"the cub and flowers layouts contain, not {dataset}.")
    if dataset == "shapes":
        from sdn_tf.data import shapes

        return shapes.load_shapes_split(shapes.open_shapes(data_dir), split)
    if not data_dir:
        raise ValueError(f"Dataset {dataset} needs data_dir, the folder that contains it.")
    from sdn_tf.data import readers

    kwargs = {"use_embeddings": True} if use_embeddings else {}
    return readers.read_dataset(dataset, data_dir, split, skips=skips, validate_images=True,
                                **kwargs)


def prepare_dataset(dataset: str, data_dir, output_dir, *, image_size: int = 224,
                    crop: str = "none", shards: int = 8, image_format: str = "jpeg",
                    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                    splits: Sequence[str] = ("train", "test"), use_embeddings: bool = False,
                    overwrite: bool = False) -> dict:
    """Read `splits` of a dataset with the readers and write them as a prepared folder.

    Returns the manifest. See `write_prepared` for the output and its errors.
    """
    settings = _check_settings(image_size, crop, shards, image_format, jpeg_quality)
    _check_output_dir(os.path.abspath(os.fspath(output_dir)), overwrite)
    if not splits:
        raise ValueError("No splits to prepare: pass at least one, such as train.")
    sources = {}
    for split in splits:
        skips = SkipReport()
        records = read_source_split(dataset, data_dir, split, skips, use_embeddings)
        sources[split] = (records, skips)
    source = {"dataset": dataset,
              "source_dir": os.path.abspath(os.fspath(data_dir)) if data_dir else None}
    return write_prepared(output_dir, sources, source=source, overwrite=overwrite,
                          **dataclasses.asdict(settings))


def write_prepared(output_dir, splits: Mapping[str, tuple], *, image_size: int,
                   crop: str = "none", shards: int = 8, image_format: str = "jpeg",
                   jpeg_quality: int = DEFAULT_JPEG_QUALITY, source: Optional[dict] = None,
                   overwrite: bool = False) -> dict:
    """Write ImageRecords as sharded TFRecords plus manifest.json, and return the manifest.

    Args:
      output_dir: the prepared folder to create. Everything is written into a
        temporary sibling folder that is renamed to output_dir at the end, so
        output_dir never contains a partial dataset. An exception removes the
        temporary folder, but a killed process leaves its `.<name>.tmp-*` folder.
      splits: split name -> (records, SkipReport of the items the reader left out).
        Records with a crop of "bbox" but no bounding box, and images TensorFlow cannot
        decode, are added to that split's skips.
      image_size: side in pixels of the stored square images.
      crop: "none" resizes the whole image; "bbox" first crops to 1.5 times the
        bounding box, as `pipeline.decode_and_resize` does.
      shards: TFRecord files per split, at most one per image.
      source: {"dataset": name, "source_dir": folder} for the manifest.
      overwrite: replace an existing prepared folder.

    Raises:
      FileExistsError: output_dir exists and overwrite is False, or it is not a
        prepared folder.
      ValueError: invalid settings, duplicate record names, embeddings present on only
        some records, or a split left without images.
    """
    settings = _check_settings(image_size, crop, shards, image_format, jpeg_quality)
    output_dir = os.path.abspath(os.fspath(output_dir))
    _check_output_dir(output_dir, overwrite)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    started = time.perf_counter()
    try:
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dataset": (source or {}).get("dataset"),
            "source_dir": (source or {}).get("source_dir"),
            "image_size": settings.image_size,
            "crop": settings.crop,
            "image_format": settings.image_format,
            "jpeg_quality": settings.jpeg_quality if settings.image_format == "jpeg" else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "splits": {},
        }
        for split, (records, skips) in splits.items():
            manifest["splits"][split] = _write_split(temporary, split, list(records),
                                                     skips if skips is not None else SkipReport(),
                                                     settings)
        with open(os.path.join(temporary, MANIFEST_FILE), "w", encoding="utf-8") as file:
            json.dump(manifest, file, indent=1)
            file.write("\n")
        _move_into_place(temporary, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _log_summary(output_dir, manifest, time.perf_counter() - started)
    return manifest


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
    if not os.path.exists(output_dir):
        return
    if not overwrite:
        raise FileExistsError(f"Output folder {output_dir} already exists: choose another "
                              "output folder, or pass overwrite (--overwrite) to replace it.")
    if not os.path.isfile(os.path.join(output_dir, MANIFEST_FILE)):
        raise FileExistsError(f"Output folder {output_dir} exists and is not a prepared "
                              f"dataset (no {MANIFEST_FILE}), so it is not replaced: choose "
                              "another output folder.")


def _move_into_place(temporary: str, output_dir: str, overwrite: bool) -> None:
    if not os.path.exists(output_dir):
        os.rename(temporary, output_dir)
        return
    _check_output_dir(output_dir, overwrite)
    previous = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-",
                                dir=os.path.dirname(output_dir))
    os.rmdir(previous)
    os.rename(output_dir, previous)
    os.rename(temporary, output_dir)
    shutil.rmtree(previous, ignore_errors=True)


def _usable_records(split: str, records: list, skips: SkipReport, crop: str) -> list:
    names = set()
    for record in records:
        if record.name in names:
            raise ValueError(f"Split {split} lists the record name {record.name!r} twice; "
                             "names key the manifest checksums, so they must be unique.")
        names.add(record.name)
    with_embeddings = sum(record.embeddings is not None for record in records)
    if 0 < with_embeddings < len(records):
        raise ValueError(f"Split {split}: {with_embeddings} of {len(records)} records carry "
                         "embeddings. Attach embeddings to every record or to none.")
    if crop != "bbox":
        return records
    if records and not any(record.bbox for record in records):
        raise ValueError(f"crop='bbox' needs bounding boxes, but no record of split {split} "
                         "has one: use crop='none', or give CUB its bounding_boxes.txt.")
    usable = []
    for record in records:
        if record.bbox:
            usable.append(record)
        else:
            skips.add(record.name, NO_BBOX)
    return usable


def _encode_images(records: list, settings: _Settings) -> Iterator[tuple[int, bytes]]:
    """Yield (position, encoded image) in record order, leaving out undecodable images.

    Decoding, cropping and resizing are `pipeline.decode_and_resize`, so a prepared
    image matches the one training would decode from the source file, up to the
    JPEG re-encoding (PNG is lossless).
    """
    paths = [record.image_path for record in records]
    boxes = np.asarray([record.bbox or (0, 0, 0, 0) for record in records], np.float32)
    crop = settings.crop == "bbox"

    def encode(position, path, box):
        image = pipeline.decode_and_resize(tf.io.read_file(path), settings.image_size,
                                           box if crop else None)
        if settings.image_format == "jpeg":
            encoded = tf.io.encode_jpeg(image, quality=settings.jpeg_quality)
        else:
            encoded = tf.io.encode_png(image)
        return position, encoded

    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(records), dtype=np.int64), paths, boxes.reshape(-1, 4)))
    dataset = dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The readers already decoded every image with Pillow, so an error here is rare.
    # ignore_errors drops the failing element; the caller records it as skipped.
    dataset = dataset.ignore_errors(log_warning=True).prefetch(tf.data.AUTOTUNE)
    for position, encoded in dataset.as_numpy_iterator():
        yield int(position), encoded


def _bytes_feature(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int64_feature(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _serialize(record: ImageRecord, encoded: bytes, image_format: str) -> bytes:
    feature = {
        "image/encoded": _bytes_feature([encoded]),
        "image/format": _bytes_feature([image_format.encode()]),
        "image/file_name": _bytes_feature([os.path.basename(record.image_path).encode("utf-8")]),
        "name": _bytes_feature([record.name.encode("utf-8")]),
        "captions": _bytes_feature(caption.encode("utf-8") for caption in record.captions),
        "class_id": _int64_feature([int(record.class_id)]),
    }
    if record.embeddings is not None:
        embeddings = np.asarray(record.embeddings, np.float32)
        feature["embeddings"] = tf.train.Feature(
            float_list=tf.train.FloatList(value=embeddings.reshape(-1)))
        feature["embeddings/shape"] = _int64_feature(embeddings.shape)
    if record.attributes:
        feature["attributes"] = _bytes_feature(
            [json.dumps(record.attributes, sort_keys=True).encode("utf-8")])
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def _write_split(folder: str, split: str, records: list, skips: SkipReport,
                 settings: _Settings) -> dict:
    records = _usable_records(split, records, skips, settings.crop)
    if not records:
        raise ValueError(f"Split {split} has no usable images (skipped: {skips.reasons()}).")
    num_shards = min(settings.shards, len(records))
    if num_shards < settings.shards:
        logging.info("%s: %d images, so %d shards instead of %d.", split, len(records),
                     num_shards, settings.shards)
    # Contiguous chunks keep the record order: reading the shards in order returns it.
    shard_of = np.concatenate([np.full(len(chunk), shard) for shard, chunk in
                               enumerate(np.array_split(np.arange(len(records)), num_shards))])
    files = [shard_file_name(split, shard, num_shards) for shard in range(num_shards)]
    counts = [0] * num_shards
    items = {}
    written = set()
    progress_every = max(100, len(records) // 10)
    started = time.perf_counter()
    writers = [tf.io.TFRecordWriter(os.path.join(folder, name)) for name in files]
    try:
        for position, encoded in _encode_images(records, settings):
            record = records[position]
            shard = int(shard_of[position])
            writers[shard].write(_serialize(record, encoded, settings.image_format))
            items[record.name] = {"sha256": sha256_bytes(encoded), "shard": shard,
                                  "index": counts[shard]}
            counts[shard] += 1
            written.add(position)
            if len(written) % progress_every == 0:
                logging.info("%s: %d/%d images written (%.1f images/s).", split, len(written),
                             len(records), len(written) / (time.perf_counter() - started))
    finally:
        for writer in writers:
            writer.close()

    for position, record in enumerate(records):
        if position not in written:
            skips.add(record.name, NOT_DECODABLE_BY_TF)
    decoded_records = [record for position, record in enumerate(records) if position in written]
    if not decoded_records:
        raise ValueError(f"Split {split}: TensorFlow could not decode any of its "
                         f"{len(records)} images.")
    shards = []
    for shard, name in enumerate(files):
        path = os.path.join(folder, name)
        shards.append({"file": name, "images": counts[shard], "bytes": os.path.getsize(path),
                       "sha256": sha256_file(path)})
    dims = {np.asarray(record.embeddings).shape[-1] for record in decoded_records
            if record.embeddings is not None}
    if len(dims) > 1:
        raise ValueError(f"Split {split}: embeddings have different sizes {sorted(dims)}.")
    classes = sorted({int(record.class_id) for record in decoded_records})
    return {
        "images": len(decoded_records),
        "captions": sum(len(record.captions) for record in decoded_records),
        "num_classes": len(classes),
        "classes": classes,
        "embedding_dim": dims.pop() if dims else None,
        "shards": shards,
        "items": items,
        "skipped": [{"name": name, "reason": reason} for name, reason in skips.items],
        "skipped_counts": skips.reasons(),
    }


def _log_summary(output_dir: str, manifest: dict, seconds: float) -> None:
    for split, info in manifest["splits"].items():
        logging.info("%s: %d images, %d captions, %d classes, %d shards, %.1f MB; %d skipped%s.",
                     split, info["images"], info["captions"], info["num_classes"],
                     len(info["shards"]), sum(s["bytes"] for s in info["shards"]) / 1e6,
                     len(info["skipped"]),
                     f" {info['skipped_counts']}" if info["skipped"] else "")
    logging.info("Prepared %s at %dx%d (%s) in %s in %.1f s.", manifest["dataset"] or "records",
                 manifest["image_size"], manifest["image_size"], manifest["image_format"],
                 output_dir, seconds)


# --------------------------------------------------------------------------- reading


def is_prepared_folder(path) -> bool:
    """Return True when `path` is a folder with a manifest.json."""
    return bool(path) and os.path.isfile(os.path.join(os.fspath(path), MANIFEST_FILE))


def read_manifest(folder) -> dict:
    """Load and check the manifest.json of a prepared folder.

    Raises:
      FileNotFoundError: the folder has no manifest.json.
      ValueError: the manifest was not written by this module or has another version.
    """
    path = os.path.join(os.fspath(folder), MANIFEST_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass a folder written by "
                                "tools/prepare_dataset.py.")
    with open(path, encoding="utf-8") as file:
        try:
            manifest = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}). {_REPAIR_HINT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a manifest of tools/prepare_dataset.py (expected "
                         f"format {FORMAT_NAME!r}).")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest.get('format_version')!r}; this "
                         f"sdn_tf reads version {FORMAT_VERSION}. {_REPAIR_HINT}")
    return manifest


def _split_info(manifest: dict, folder: str, split: str) -> dict:
    if split not in manifest["splits"]:
        raise ValueError(f"Split {split!r} was not prepared in {folder}; it contains "
                         f"{', '.join(manifest['splits']) or 'no splits'}.")
    return manifest["splits"][split]


def _names_by_location(info: dict) -> dict:
    return {(item["shard"], item["index"]): name for name, item in info["items"].items()}


def _iterate_shard(path: str) -> Iterator[bytes]:
    return tf.data.TFRecordDataset(path).as_numpy_iterator()


def _damage_message(path: str, index: int, name: Optional[str], problem: str) -> str:
    item = f"item {index}" + (f" ({name!r})" if name else "")
    return f"Checksum mismatch in shard {path}, {item}: {problem}. {_REPAIR_HINT}"


def _tf_error_text(error: tf.errors.OpError) -> str:
    """Return the TensorFlow error text without the op and function names around it."""
    text = error.message.strip().splitlines()[0]
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:.*$", "", text)


def _find_damaged_item(path: str, info: dict, shard: int) -> Optional[str]:
    """Return a message naming the first unreadable or altered item of a shard, or None."""
    names = _names_by_location(info)
    index = 0
    try:
        for serialized in _iterate_shard(path):
            name = names.get((shard, index))
            example = tf.train.Example.FromString(serialized)
            encoded = example.features.feature["image/encoded"].bytes_list.value[0]
            expected = info["items"][name]["sha256"] if name in info["items"] else None
            if sha256_bytes(encoded) != expected:
                return _damage_message(path, index, name, "the image bytes differ from the "
                                       "SHA-256 in the manifest")
            index += 1
    except tf.errors.OpError as error:
        problem = f"the TFRecord checksum failed ({_tf_error_text(error)})"
        return _damage_message(path, index, names.get((shard, index)), problem)
    return None


def _raise_shard_damage(path: str, info: dict, shard: int, detail: str) -> None:
    message = _find_damaged_item(path, info, shard)
    if message is None:
        message = f"Checksum mismatch in shard {path}: {detail}. {_REPAIR_HINT}"
    raise ChecksumError(message)


def _parse_record(serialized: bytes, path: str, index: int) -> tuple[ImageRecord, bytes]:
    feature = tf.train.Example.FromString(serialized).features.feature
    embeddings = None
    if "embeddings" in feature:
        shape = tuple(feature["embeddings/shape"].int64_list.value)
        embeddings = np.asarray(feature["embeddings"].float_list.value, np.float32).reshape(shape)
    attributes = {}
    if "attributes" in feature:
        attributes = json.loads(feature["attributes"].bytes_list.value[0].decode("utf-8"))
    attributes[TFRECORD_INDEX] = index
    record = ImageRecord(
        name=feature["name"].bytes_list.value[0].decode("utf-8"),
        image_path=path,
        captions=tuple(value.decode("utf-8") for value in feature["captions"].bytes_list.value),
        class_id=int(feature["class_id"].int64_list.value[0]),
        embeddings=embeddings,
        attributes=attributes,
    )
    return record, feature["image/encoded"].bytes_list.value[0]


def _read_shard_records(path: str, info: dict, shard: int, verify: bool) -> Optional[list]:
    """Parse one shard's records, or return None when TensorFlow cannot read the file."""
    records = []
    try:
        for index, serialized in enumerate(_iterate_shard(path)):
            record, encoded = _parse_record(serialized, path, index)
            item = info["items"].get(record.name)
            if item is None or (item["shard"], item["index"]) != (shard, index):
                raise ChecksumError(_damage_message(
                    path, index, record.name, "the manifest lists this item elsewhere or "
                    "not at all"))
            if verify and sha256_bytes(encoded) != item["sha256"]:
                raise ChecksumError(_damage_message(
                    path, index, record.name, "the image bytes differ from the SHA-256 in "
                    "the manifest"))
            records.append(record)
    except tf.errors.OpError:
        return None
    return records


def read_tfrecord_split(folder, split: str, verify: bool = True) -> list[ImageRecord]:
    """Read the ImageRecords of one split of a prepared folder, in their source order.

    Each record's image_path is its shard and attributes[TFRECORD_INDEX] its position;
    bbox is None because the stored image is already cropped as the manifest records.
    With `verify`, every shard's SHA-256 and every item's image SHA-256 are compared
    with the manifest.

    Raises:
      ChecksumError: a shard or an item differs from the manifest; the message names
        the shard file and the item.
      FileNotFoundError: a shard is missing.
    """
    folder = os.path.abspath(os.fspath(folder))
    manifest = read_manifest(folder)
    info = _split_info(manifest, folder, split)
    records = []
    for shard, entry in enumerate(info["shards"]):
        path = os.path.join(folder, entry["file"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Shard {path} listed in {MANIFEST_FILE} not found. "
                                    f"{_REPAIR_HINT}")
        if verify:
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                _raise_shard_damage(path, info, shard, f"file SHA-256 {actual}, manifest "
                                    f"{entry['sha256']}")
        shard_records = _read_shard_records(path, info, shard, verify)
        if shard_records is None:
            _raise_shard_damage(path, info, shard, "the TFRecord file cannot be read")
        records.extend(shard_records)
        if len(shard_records) != entry["images"]:
            raise ChecksumError(f"Shard {path} contains {len(shard_records)} items but the "
                                f"manifest lists {entry['images']}. {_REPAIR_HINT}")
    return records


def load_prepared_split(dataset: str, data_dir, split: str,
                        skips: Optional[SkipReport] = None) -> list[ImageRecord]:
    """Read a split of a prepared folder for `datasets.load_split`.

    `dataset` is "tfrecord" (any prepared dataset) or the name the folder was prepared
    from. The items left out at preparation are added to `skips` and logged.
    """
    if not data_dir:
        raise ValueError("--dataset=tfrecord needs --data_dir, a folder written by "
                         "tools/prepare_dataset.py.")
    manifest = read_manifest(data_dir)
    prepared_from = manifest["dataset"]
    if dataset not in ("tfrecord", prepared_from):
        choices = "--dataset=tfrecord"
        if prepared_from:
            choices = f"--dataset={prepared_from} or {choices}"
        raise ValueError(f"{data_dir} contains a prepared dataset made from "
                         f"{prepared_from or 'records without a dataset name'}, not from "
                         f"{dataset!r}: pass {choices}.")
    records = read_tfrecord_split(data_dir, split)
    info = manifest["splits"][split]
    if info["skipped"]:
        logging.warning("%s/%s: %d items were skipped when the folder was prepared: %s",
                        data_dir, split, len(info["skipped"]), info["skipped_counts"])
    if skips is not None:
        for item in info["skipped"]:
            skips.add(item["name"], item["reason"])
    return records


def is_tfrecord_record(record: ImageRecord) -> bool:
    """Return True for a record read by `read_tfrecord_split`."""
    return bool(record.attributes) and TFRECORD_INDEX in record.attributes


def _locate_items(records: Sequence[ImageRecord]) -> tuple[dict, dict]:
    """Group records by shard and check each against its folder's manifest.

    Returns ({shard path: (folder manifest, split info, shard number)},
    {(shard path, index): [row, ...]}).
    """
    shards = {}
    rows: dict = {}
    manifests = {}
    for row, record in enumerate(records):
        if not is_tfrecord_record(record):
            raise ValueError(f"Record {record.name!r} was not read from a prepared folder, "
                             "but others were: load images from one source at a time.")
        path = record.image_path
        if path not in shards:
            folder = os.path.dirname(path)
            if folder not in manifests:
                manifests[folder] = read_manifest(folder)
            manifest = manifests[folder]
            found = [(split, info, shard) for split, info in manifest["splits"].items()
                     for shard, entry in enumerate(info["shards"])
                     if entry["file"] == os.path.basename(path)]
            if not found:
                raise ValueError(f"Shard {path} is not listed in {folder}/{MANIFEST_FILE}. "
                                 f"{_REPAIR_HINT}")
            _, info, shard = found[0]
            shards[path] = (manifest, info, shard)
        _, info, shard = shards[path]
        index = record.attributes[TFRECORD_INDEX]
        item = info["items"].get(record.name)
        if item is None or (item["shard"], item["index"]) != (shard, index):
            raise ValueError(f"Record {record.name!r} at {path} item {index} does not match "
                             f"{MANIFEST_FILE}: read the records again with "
                             "read_tfrecord_split.")
        rows.setdefault((path, index), []).append(row)
    return shards, rows


def _check_request(manifest: dict, folder: str, image_size: int, crop_to_bbox: bool) -> None:
    prepared_crop = manifest["crop"]
    requested_crop = "bbox" if crop_to_bbox else "none"
    if prepared_crop != requested_crop:
        raise ValueError(
            f"{folder} was prepared with crop={prepared_crop}, but crop={requested_crop} was "
            f"requested: pass --crop={prepared_crop}, which the stored images already "
            f"have, or prepare again with --crop={requested_crop}.")
    if image_size > manifest["image_size"]:
        raise ValueError(
            f"{folder} stores {manifest['image_size']}x{manifest['image_size']} images, "
            f"smaller than the requested {image_size}x{image_size}: prepare again with "
            f"--image_size={image_size}.")


def load_images(records: Sequence[ImageRecord], image_size: int,
                crop_to_bbox: bool = False) -> np.ndarray:
    """Decode the images of records read from prepared folders: uint8 [N, S, S, 3].

    Images stored at the requested size are used as they are; larger ones are resized
    down like source images. Each item's encoded bytes are checked against the SHA-256
    in the manifest.

    Raises:
      ValueError: the records do not all come from prepared folders, or the crop
        differs from the one prepared, or image_size exceeds the stored size.
      ChecksumError: a shard or an item is damaged; the message names both.
    """
    if not records:
        raise ValueError("No images to load: the split is empty.")
    shards, rows = _locate_items(records)
    for path, (manifest, _, _) in shards.items():
        _check_request(manifest, os.path.dirname(path), image_size, crop_to_bbox)

    paths = list(shards)
    # One boolean per item of every shard, indexed by the item's position in the
    # concatenated shards, selects the items to decode.
    offsets = np.cumsum([0] + [shards[p][1]["shards"][shards[p][2]]["images"] for p in paths])
    selected = np.zeros(offsets[-1], bool)
    for path, index in rows:
        selected[offsets[paths.index(path)] + index] = True

    def enumerate_shard(number):
        return tf.data.TFRecordDataset(paths[number]).enumerate(start=int(offsets[number]))

    dataset = enumerate_shard(0)
    for number in range(1, len(paths)):
        dataset = dataset.concatenate(enumerate_shard(number))
    selected_table = tf.constant(selected)
    dataset = dataset.filter(lambda position, serialized: tf.gather(selected_table, position))

    def decode(position, serialized):
        encoded = tf.io.parse_single_example(
            serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})["image/encoded"]
        return position, encoded, pipeline.decode_and_resize(encoded, image_size)

    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images = np.empty((len(records), image_size, image_size, 3), np.uint8)
    filled = 0
    try:
        for position, encoded, image in dataset.as_numpy_iterator():
            number = int(np.searchsorted(offsets, position, side="right")) - 1
            path = paths[number]
            index = int(position - offsets[number])
            _, info, shard = shards[path]
            targets = rows[(path, index)]
            name = records[targets[0]].name
            if sha256_bytes(encoded) != info["items"][name]["sha256"]:
                raise ChecksumError(_damage_message(path, index, name, "the image bytes "
                                                    "differ from the SHA-256 in the manifest"))
            images[targets] = image
            filled += len(targets)
    except tf.errors.OpError as error:
        # A failed TFRecord checksum surfaces here without the item's position, because
        # reading runs ahead of the filter. Scanning the shards finds the item.
        for path, (_, info, shard) in shards.items():
            message = _find_damaged_item(path, info, shard)
            if message:
                raise ChecksumError(message) from None
        raise ValueError(f"Failed to read the prepared images: {_tf_error_text(error)}. "
                         f"{_REPAIR_HINT}") from None
    if filled != len(records):
        raise ChecksumError(f"Read {filled} of {len(records)} requested images: a shard is "
                            f"shorter than its manifest entry. {_REPAIR_HINT}")
    logging.info("Decoded %d prepared images at %dx%d.", len(records), image_size, image_size)
    return images
