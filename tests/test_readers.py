"""Tests of the dataset readers on the real CUB and Oxford-102 metadata and on bad input.

The CUB metadata, captions and flower photographs come from ../shared/data next to the
repository. Bird images are not part of that data, so the CUB tests write a tiny
stand-in JPEG for each listed name.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdn_tf.data.readers import (
    check_image_file,
    parse_captions,
    read_caption_file,
    read_cub,
    read_dataset,
    read_flowers,
    read_folder,
    read_tfds_images,
)
from sdn_tf.data.records import SkipReport

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CUB_DATA = SHARED_DATA / "cub"
FLOWERS_DATA = SHARED_DATA / "flowers102"

needs_cub = pytest.mark.skipif(not CUB_DATA.is_dir(), reason=f"{CUB_DATA} not found")
needs_flowers = pytest.mark.skipif(not FLOWERS_DATA.is_dir(),
                                   reason=f"{FLOWERS_DATA} not found")

ALBATROSS = "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18"
CUB_TEST_NAMES = 2933
CUB_TEST_WITH_CAPTIONS = 2346


def _jpeg_bytes(mode="RGB", size=8, fmt="JPEG") -> bytes:
    colour = {"RGB": (200, 120, 40), "L": 128, "CMYK": (10, 20, 30, 40)}[mode]
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buffer, fmt)
    return buffer.getvalue()


STAND_IN_JPEG = _jpeg_bytes()


def _load_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _write_images(image_dir: Path, names) -> None:
    for name in names:
        path = image_dir / (name + ".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(STAND_IN_JPEG)


def _copy_cub_metadata(root: Path) -> None:
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for file_name in ("filenames.pickle", "class_info.pickle"):
            shutil.copy(CUB_DATA / split / file_name, root / split / file_name)
    shutil.copytree(CUB_DATA / "CUB_200_2011", root / "CUB_200_2011")


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    """Real CUB metadata and captions, with a stand-in JPEG for every listed image."""
    root = tmp_path_factory.mktemp("cub")
    _copy_cub_metadata(root)
    (root / "text_c10").symlink_to(CUB_DATA / "text_c10")
    names = _load_pickle(CUB_DATA / "train" / "filenames.pickle")
    names += _load_pickle(CUB_DATA / "test" / "filenames.pickle")
    _write_images(root / "CUB_200_2011" / "images", names)
    return root


@pytest.fixture(scope="module")
def cub_train_captions(tmp_path_factory):
    """One stand-in caption per training image, which ../shared/data does not include."""
    caption_dir = tmp_path_factory.mktemp("cub_train_text")
    for name in _load_pickle(CUB_DATA / "train" / "filenames.pickle"):
        path = caption_dir / (name + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a small bird with a short beak.\n")
    return caption_dir


def _make_cub(root: Path, captions: dict, class_ids=None, images=None) -> Path:
    """Write a small CUB-layout test split; `captions` maps names to file bytes or None."""
    names = list(captions)
    (root / "test").mkdir(parents=True)
    with open(root / "test" / "filenames.pickle", "wb") as f:
        pickle.dump(names, f, protocol=0)
    if class_ids is None:
        class_ids = [int(name.split(".")[0]) for name in names]
    with open(root / "test" / "class_info.pickle", "wb") as f:
        pickle.dump(class_ids, f, protocol=0)
    _write_images(root / "CUB_200_2011" / "images", names if images is None else images)
    for name, data in captions.items():
        if data is not None:
            path = root / "text_c10" / (name + ".txt")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return root


TEN_CAPTIONS = b"".join(b"caption number %d.\n" % i for i in range(10))


# CUB on the real metadata.


@needs_cub
def test_cub_test_split_counts(cub_root):
    skips = SkipReport()
    records = read_cub(cub_root, "test", skips=skips)
    assert len(records) == CUB_TEST_WITH_CAPTIONS
    assert len(records) + len(skips) == CUB_TEST_NAMES


@needs_cub
def test_cub_missing_captions_counted(cub_root):
    skips = SkipReport()
    read_cub(cub_root, "test", skips=skips)
    assert skips.reasons() == {"caption file not found": CUB_TEST_NAMES - CUB_TEST_WITH_CAPTIONS}


@needs_cub
def test_cub_test_classes(cub_root):
    class_ids = _load_pickle(cub_root / "test" / "class_info.pickle")
    records = read_cub(cub_root, "test")
    assert len(set(int(c) for c in class_ids)) == 50
    # Only 40 of the 50 test classes have caption files in the shared data.
    assert len({record.class_id for record in records}) == 40


@needs_cub
def test_cub_train_classes_disjoint(cub_root, cub_train_captions):
    train = read_cub(cub_root, "train", caption_dir=cub_train_captions)
    test_classes = {int(c) for c in _load_pickle(cub_root / "test" / "class_info.pickle")}
    train_classes = {record.class_id for record in train}
    assert len(train) == 8855
    assert len(train_classes) == 150
    assert not train_classes & test_classes


@needs_cub
def test_cub_train_class_ids_are_int(cub_root, cub_train_captions):
    raw = _load_pickle(cub_root / "train" / "class_info.pickle")
    assert isinstance(raw[0], np.int64)
    records = read_cub(cub_root, "train", caption_dir=cub_train_captions)
    assert all(type(record.class_id) is int for record in records)
    assert [record.class_id for record in records] == [int(value) for value in raw]


@needs_cub
def test_cub_captions_match_file(cub_root):
    records = {record.name: record for record in read_cub(cub_root, "test")}
    expected = (CUB_DATA / "text_c10" / (ALBATROSS + ".txt")).read_text().splitlines()
    assert list(records[ALBATROSS].captions) == expected
    assert len(expected) == 10


@needs_cub
def test_cub_record_fields(cub_root):
    record = read_cub(cub_root, "test")[0]
    assert record.name == ALBATROSS
    assert record.class_id == 1
    assert record.image_path == str(cub_root / "CUB_200_2011" / "images" / (ALBATROSS + ".jpg"))
    assert record.embeddings is None


@needs_cub
def test_cub_bbox_matches_file(cub_root):
    image_ids = {}
    for line in (CUB_DATA / "CUB_200_2011" / "images.txt").read_text().splitlines():
        image_id, file_name = line.split()
        image_ids[file_name] = image_id
    boxes = {}
    for line in (CUB_DATA / "CUB_200_2011" / "bounding_boxes.txt").read_text().splitlines():
        fields = line.split()
        boxes[fields[0]] = tuple(float(value) for value in fields[1:])
    records = {record.name: record for record in read_cub(cub_root, "test")}
    assert records[ALBATROSS].bbox == boxes[image_ids[ALBATROSS + ".jpg"]]
    assert records[ALBATROSS].bbox == (60.0, 27.0, 325.0, 304.0)


@needs_cub
def test_cub_attngan_text_folder(tmp_path):
    _copy_cub_metadata(tmp_path)
    (tmp_path / "text").symlink_to(CUB_DATA / "text_c10")
    _write_images(tmp_path / "CUB_200_2011" / "images",
                  _load_pickle(CUB_DATA / "test" / "filenames.pickle"))
    records = read_cub(tmp_path, "test")
    expected = (CUB_DATA / "text_c10" / (ALBATROSS + ".txt")).read_text().splitlines()
    assert len(records) == CUB_TEST_WITH_CAPTIONS
    assert records[0].name == ALBATROSS
    assert list(records[0].captions) == expected


@needs_cub
def test_cub_wrong_data_dir_raises(tmp_path):
    _copy_cub_metadata(tmp_path)
    (tmp_path / "text_c10").symlink_to(CUB_DATA / "text_c10")
    with pytest.raises(FileNotFoundError, match="CUB_200_2011/images"):
        read_cub(tmp_path, "test")


@needs_cub
def test_cub_missing_captions_raise(cub_root):
    # The shared data has no training captions: every training item is missing one.
    with pytest.raises(FileNotFoundError, match="caption file not found"):
        read_cub(cub_root, "train")


@needs_cub
def test_cub_crlf_pickle_raises(tmp_path):
    _copy_cub_metadata(tmp_path)
    path = tmp_path / "test" / "filenames.pickle"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(ValueError, match="carriage return") as error:
        read_cub(tmp_path, "test")
    assert str(path) in str(error.value)
    assert "dos2unix" in str(error.value)


@needs_cub
def test_cub_crlf_numpy_pickle_raises(tmp_path):
    _copy_cub_metadata(tmp_path)
    path = tmp_path / "train" / "class_info.pickle"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(ValueError, match="CRLF line-ending conversion"):
        read_cub(tmp_path, "train", caption_dir=tmp_path)


# CUB on small hand-made splits.


def test_cub_missing_image_skipped(tmp_path):
    names = ["001.A/a_1", "001.A/a_2", "002.B/b_1"]
    _make_cub(tmp_path, {name: TEN_CAPTIONS for name in names}, images=names[1:])
    skips = SkipReport()
    records = read_cub(tmp_path, "test", skips=skips)
    assert [record.name for record in records] == names[1:]
    assert skips.items == [("001.A/a_1", "image file not found")]


def test_cub_numpy_int64_class_info(tmp_path):
    names = ["001.A/a_1", "002.B/b_1"]
    _make_cub(tmp_path, {name: TEN_CAPTIONS for name in names},
              class_ids=[np.int64(7), np.int64(9)])
    records = read_cub(tmp_path, "test")
    assert [record.class_id for record in records] == [7, 9]
    assert all(type(record.class_id) is int for record in records)


def test_cub_class_from_folder_prefix(tmp_path):
    _make_cub(tmp_path, {"001.A/a_1": TEN_CAPTIONS, "017.B/b_1": TEN_CAPTIONS})
    (tmp_path / "test" / "class_info.pickle").unlink()
    assert [record.class_id for record in read_cub(tmp_path, "test")] == [1, 17]


def test_cub_empty_caption_file_skipped(tmp_path):
    _make_cub(tmp_path, {"001.A/a_1": b"\n  \n\r\n", "001.A/a_2": TEN_CAPTIONS})
    skips = SkipReport()
    records = read_cub(tmp_path, "test", skips=skips)
    assert [record.name for record in records] == ["001.A/a_2"]
    assert skips.items == [("001.A/a_1", "no captions")]


def test_cub_caption_counts_kept(tmp_path, caplog):
    five = b"".join(b"five %d\n" % i for i in range(5))
    twelve = b"".join(b"twelve %d\n" % i for i in range(12))
    _make_cub(tmp_path, {"001.A/a_1": five, "001.A/a_2": twelve, "001.A/a_3": TEN_CAPTIONS})
    caplog.set_level(logging.INFO, logger="absl")
    records = read_cub(tmp_path, "test")
    assert [len(record.captions) for record in records] == [5, 12, 10]
    assert "2 of 3 caption files do not have exactly 10 captions" in caplog.text


def test_cub_non_ascii_captions(tmp_path):
    data = "a café-coloured bird.\n".encode("utf-8") + b"a na\xefve bird.\n"
    _make_cub(tmp_path, {"001.A/a_1": data})
    records = read_cub(tmp_path, "test")
    assert list(records[0].captions) == ["a café-coloured bird.", "a naïve bird."]


def test_cub_embeddings_attached(tmp_path):
    names = ["001.A/a_1", "001.A/a_2"]
    _make_cub(tmp_path, {name: TEN_CAPTIONS for name in names})
    embeddings = np.arange(2 * 10 * 4, dtype=np.float32).reshape(2, 10, 4)
    with open(tmp_path / "test" / "char-CNN-RNN-embeddings.pickle", "wb") as f:
        pickle.dump(embeddings, f, protocol=2)
    records = read_cub(tmp_path, "test", use_embeddings=True)
    np.testing.assert_array_equal(records[1].embeddings, embeddings[1])
    assert records[1].embeddings.dtype == np.float32


def test_cub_embedding_caption_mismatch_skipped(tmp_path):
    five = b"".join(b"five %d\n" % i for i in range(5))
    _make_cub(tmp_path, {"001.A/a_1": five, "001.A/a_2": TEN_CAPTIONS})
    with open(tmp_path / "test" / "char-CNN-RNN-embeddings.pickle", "wb") as f:
        pickle.dump(np.zeros((2, 10, 4), np.float32), f, protocol=2)
    skips = SkipReport()
    records = read_cub(tmp_path, "test", use_embeddings=True, skips=skips)
    assert [record.name for record in records] == ["001.A/a_2"]
    assert skips.reasons() == {"caption count differs from embedding count": 1}


def test_cub_missing_embeddings_raise(tmp_path):
    _make_cub(tmp_path, {"001.A/a_1": TEN_CAPTIONS})
    with pytest.raises(FileNotFoundError, match="use_embeddings=False"):
        read_cub(tmp_path, "test", use_embeddings=True)


def test_cub_class_info_length_mismatch(tmp_path):
    _make_cub(tmp_path, {"001.A/a_1": TEN_CAPTIONS}, class_ids=[1, 2])
    with pytest.raises(ValueError, match="2 class ids but"):
        read_cub(tmp_path, "test")


def test_cub_validate_images_skips_bad(tmp_path):
    names = ["001.A/a_1", "001.A/a_2", "001.A/a_3"]
    _make_cub(tmp_path, {name: TEN_CAPTIONS for name in names})
    (tmp_path / "CUB_200_2011" / "images" / "001.A" / "a_2.jpg").write_bytes(b"")
    skips = SkipReport()
    records = read_cub(tmp_path, "test", skips=skips, validate_images=True)
    assert [record.name for record in records] == ["001.A/a_1", "001.A/a_3"]
    assert skips.items == [("001.A/a_2", "empty image file")]


def test_cub_no_caption_folder_raises(tmp_path):
    _make_cub(tmp_path, {"001.A/a_1": None})
    with pytest.raises(FileNotFoundError, match="text_c10/"):
        read_cub(tmp_path, "test")


def test_cub_invalid_split_raises(tmp_path):
    with pytest.raises(ValueError, match="'val'"):
        read_cub(tmp_path, "val")


def test_cub_missing_filenames_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="filenames.pickle"):
        read_cub(tmp_path, "test")


# Caption parsing.


def test_captions_empty_lines_dropped():
    assert parse_captions(b"\n first \n\n\t\nsecond\n\n")[0] == ["first", "second"]


def test_captions_crlf_endings():
    assert parse_captions(b"first\r\nsecond\r\n")[0] == ["first", "second"]


def test_captions_utf8_decoded():
    captions, used_latin1 = parse_captions("petals of crème colour\n".encode("utf-8"))
    assert captions == ["petals of crème colour"]
    assert not used_latin1


def test_captions_latin1_fallback():
    captions, used_latin1 = parse_captions(b"petals of cr\xe8me colour\n")
    assert captions == ["petals of crème colour"]
    assert used_latin1


def test_captions_mixed_encodings_per_line():
    data = "crème\n".encode("utf-8") + b"cr\xe8me\n"
    assert parse_captions(data)[0] == ["crème", "crème"]


def test_captions_utf8_bom_removed():
    assert parse_captions(b"\xef\xbb\xbfa bird\n")[0] == ["a bird"]


def test_caption_file_read(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\n\ntwo\n")
    assert read_caption_file(str(path)) == ["one", "two"]


# Image checks.


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_image_check_accepts_jpeg_modes(tmp_path, mode):
    path = tmp_path / "image.jpg"
    path.write_bytes(_jpeg_bytes(mode, size=32))
    assert check_image_file(str(path)) is None


def test_image_check_accepts_png_named_jpg(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(_jpeg_bytes(fmt="PNG"))
    assert check_image_file(str(path)) is None


def test_image_check_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    path = tmp_path / "image.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert check_image_file(str(path)) == "truncated image"


def test_image_check_zero_bytes(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(b"")
    assert check_image_file(str(path)) == "empty image file"


def test_image_check_undecodable_bytes(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(b"<html>404 not found</html>")
    assert check_image_file(str(path)) == "undecodable image"


def test_image_check_tiff_unsupported(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(_jpeg_bytes(fmt="TIFF"))
    assert check_image_file(str(path)) == "unsupported image format"


def test_image_check_missing_file(tmp_path):
    assert check_image_file(str(tmp_path / "absent.jpg")) == "image file not found"


@needs_flowers
def test_image_check_real_photograph():
    assert check_image_file(str(FLOWERS_DATA / "jpg" / "image_01143.jpg")) is None


# Oxford-102: folder datasets built from imagelabels.csv, and read_flowers.


def _flower_labels():
    with open(FLOWERS_DATA / "imagelabels.csv", newline="") as f:
        return [(row["image"], int(row["label"]), row["class_name"]) for row in csv.DictReader(f)]


def _write_metadata(folder: Path, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jpg").symlink_to(FLOWERS_DATA / "jpg")
    with open(folder / "metadata.jsonl", "w") as f:
        for image, label, class_name in rows:
            f.write(json.dumps({"file_name": f"jpg/{image}.jpg",
                                "text": [f"a photo of a {class_name}"],
                                "class_id": label}) + "\n")


@needs_flowers
def test_folder_flowers_counts(tmp_path):
    labels = _flower_labels()
    _write_metadata(tmp_path, labels)
    records = read_folder(tmp_path)
    assert len(records) == len(labels) == 957
    assert len({record.class_id for record in records}) == 16


@needs_flowers
def test_folder_flowers_record(tmp_path):
    _write_metadata(tmp_path, _flower_labels())
    records = {record.name: record for record in read_folder(tmp_path)}
    record = records["jpg/image_01143.jpg"]
    assert list(record.captions) == ["a photo of a rose"]
    assert record.class_id == 74
    assert os.path.samefile(record.image_path, FLOWERS_DATA / "jpg" / "image_01143.jpg")


@needs_flowers
def test_folder_flowers_split_folders(tmp_path):
    labels = _flower_labels()
    test_classes = {1, 5, 74, 84}
    _write_metadata(tmp_path / "train", [row for row in labels if row[1] not in test_classes])
    _write_metadata(tmp_path / "test", [row for row in labels if row[1] in test_classes])
    train = read_folder(tmp_path, "train")
    test = read_folder(tmp_path, "test")
    assert len(train) + len(test) == 957
    assert {record.class_id for record in test} == test_classes
    assert len({record.class_id for record in train}) == 12


def test_folder_class_id_default(tmp_path):
    (tmp_path / "a.jpg").write_bytes(STAND_IN_JPEG)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": "a red square"}\n')
    records = read_folder(tmp_path)
    assert records[0].class_id == 0
    assert list(records[0].captions) == ["a red square"]


def test_folder_repeated_file_name_merged(tmp_path):
    (tmp_path / "a.jpg").write_bytes(STAND_IN_JPEG)
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "a.jpg", "text": "first"}\n{"file_name": "a.jpg", "text": ["second"]}\n')
    records = read_folder(tmp_path)
    assert len(records) == 1
    assert list(records[0].captions) == ["first", "second"]


def test_folder_missing_items_skipped(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(STAND_IN_JPEG)
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "a.jpg", "text": "kept"}\n'
        '{"file_name": "b.jpg", "text": ["", "  "]}\n'
        '{"file_name": "c.jpg"}\n'
        '{"file_name": "d.jpg", "text": "no image"}\n'
        '{"file_name": "e.jpg", "text": "no image either"}\n')
    skips = SkipReport()
    records = read_folder(tmp_path, skips=skips)
    assert [record.name for record in records] == ["a.jpg"]
    assert skips.reasons() == {"no captions": 2, "image file not found": 2}


def test_folder_invalid_json_raises(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_folder(tmp_path)


def test_folder_invalid_text_raises(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": 5}\n')
    with pytest.raises(ValueError, match="must be a string or a list of strings"):
        read_folder(tmp_path)


def test_folder_missing_metadata_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        read_folder(tmp_path, "train")


def _flowers_subset(root: Path, classes, with_captions=True):
    """Link the real photographs into root/jpg and write stand-in captions for `classes`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "jpg").symlink_to(FLOWERS_DATA / "jpg")
    shutil.copy(FLOWERS_DATA / "imagelabels.csv", root / "imagelabels.csv")
    rows = [row for row in _flower_labels() if row[1] in classes]
    if with_captions:
        for image, label, class_name in rows:
            path = root / "text_c10" / f"class_{label:05d}" / f"{image}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"this {class_name} has bright petals.\n" * 10)
    return rows


def _write_flower_pickles(root: Path, split: str, rows, prefix: str) -> None:
    (root / split).mkdir(parents=True)
    with open(root / split / "filenames.pickle", "wb") as f:
        pickle.dump([prefix + image for image, _, _ in rows], f, protocol=0)
    with open(root / split / "class_info.pickle", "wb") as f:
        pickle.dump([label for _, label, _ in rows], f, protocol=0)


@needs_flowers
@pytest.mark.parametrize("prefix", ["jpg/", ""])
def test_flowers_stackgan_pickles(tmp_path, prefix):
    rows = _flowers_subset(tmp_path, {1, 5, 74})
    _write_flower_pickles(tmp_path, "test", rows, prefix)
    records = read_flowers(tmp_path, "test")
    assert [record.name for record in records] == [image for image, _, _ in rows]
    assert {record.class_id for record in records} == {1, 5, 74}
    assert records[0].image_path == str(tmp_path / "jpg" / (rows[0][0] + ".jpg"))
    assert len(records[0].captions) == 10


@needs_flowers
def test_flowers_reed_class_lists(tmp_path):
    all_classes = {label for _, label, _ in _flower_labels()}
    rows = _flowers_subset(tmp_path, all_classes - {45})
    (tmp_path / "testclasses.txt").write_text("class_00074\nclass_00084\n")
    test = read_flowers(tmp_path, "test")
    skips = SkipReport()
    train = read_flowers(tmp_path, "train", skips=skips)
    assert {record.class_id for record in test} == {74, 84}
    assert {record.class_id for record in train} == all_classes - {45, 74, 84}
    assert len(test) + len(train) == len(rows)
    # Class 45 belongs to train but has no caption files here.
    assert skips.reasons() == {"caption file not found": 40}


@needs_flowers
def test_flowers_explicit_classes(tmp_path):
    _flowers_subset(tmp_path, {1, 5, 74})
    records = read_flowers(tmp_path, "train", train_classes=["class_00001", 5],
                           test_classes=range(6, 103))
    by_class = {record.class_id: record for record in records}
    assert set(by_class) == {1, 5}
    assert by_class[1].attributes == {"class_name": "pink primrose"}


@needs_flowers
def test_flowers_missing_captions_raise(tmp_path):
    _flowers_subset(tmp_path, {1}, with_captions=False)
    (tmp_path / "text_c10").mkdir()
    (tmp_path / "testclasses.txt").write_text("class_00074\n")
    with pytest.raises(FileNotFoundError, match="text_c10"):
        read_flowers(tmp_path, "test")


@needs_flowers
def test_flowers_overlapping_classes_raise(tmp_path):
    _flowers_subset(tmp_path, {1})
    with pytest.raises(ValueError, match="overlap"):
        read_flowers(tmp_path, "train", train_classes=[1, 2], test_classes=[2, 3])


def test_flowers_no_split_definition_raises(tmp_path):
    (tmp_path / "text_c10").mkdir()
    with pytest.raises(FileNotFoundError, match="testclasses.txt"):
        read_flowers(tmp_path, "test")


def test_flowers_labels_from_mat_file(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    labels = np.array([[3, 3, 4, 7]], dtype=np.uint8)
    scipy_io.savemat(tmp_path / "imagelabels.mat", {"labels": labels})
    names = [f"image_{i:05d}" for i in range(1, 5)]
    _write_images(tmp_path / "jpg", names)
    for name, label in zip(names, labels[0]):
        path = tmp_path / "text_c10" / f"class_{label:05d}" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a flower.\n")
    records = read_flowers(tmp_path, "test", test_classes=[3, 7])
    assert [(record.name, record.class_id) for record in records] == [
        ("image_00001", 3), ("image_00002", 3), ("image_00004", 7)]


def test_flowers_labels_from_caption_folders(tmp_path):
    _write_images(tmp_path / "jpg", ["image_00001", "image_00002"])
    for name, label in (("image_00001", 2), ("image_00002", 9)):
        path = tmp_path / "text_c10" / f"class_{label:05d}" / f"{name}.txt"
        path.parent.mkdir(parents=True)
        path.write_text("a flower.\n")
    (tmp_path / "testclasses.txt").write_text("class_00009\n")
    records = read_flowers(tmp_path, "test")
    assert [(record.name, record.class_id) for record in records] == [("image_00002", 9)]


# Dispatch and TensorFlow Datasets.


def test_read_dataset_unknown_name():
    with pytest.raises(ValueError, match="cub, flowers, folder, shapes"):
        read_dataset("coco", "/nonexistent", "train")


def test_read_dataset_dispatches_folder(tmp_path):
    (tmp_path / "a.jpg").write_bytes(STAND_IN_JPEG)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": "x", "class_id": 4}\n')
    records = read_dataset("folder", tmp_path, None)
    assert [(record.name, record.class_id) for record in records] == [("a.jpg", 4)]


def test_read_dataset_passes_keywords(tmp_path):
    _make_cub(tmp_path, {"001.A/a_1": TEN_CAPTIONS, "001.A/a_2": None,
                         "001.A/a_3": TEN_CAPTIONS})
    skips = SkipReport()
    records = read_dataset("CUB", tmp_path, "test", skips=skips)
    assert len(records) == 2
    assert skips.items == [("001.A/a_2", "caption file not found")]


def test_read_dataset_shapes(tmp_path, monkeypatch):
    shapes = pytest.importorskip("sdn_tf.data.shapes")
    build_shapes = shapes.build_shapes
    built = []

    def build_small(root):
        # Small images keep the test fast; the dispatch under test passes only root.
        built.append(root)
        return build_shapes(root, image_size=64, images_per_class_train=1,
                            images_per_class_test=1)

    monkeypatch.setattr(shapes, "build_shapes", build_small)
    records = read_dataset("shapes", tmp_path / "shapes", "test", skips=SkipReport())
    expected = shapes.load_shapes_split(tmp_path / "shapes", "test")
    assert built == [tmp_path / "shapes"]
    assert [record.name for record in records] == [record.name for record in expected]
    assert records


@pytest.mark.parametrize("name", ["oxford_flowers102", "caltech_birds2011"])
def test_tfds_images_mocked(name):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        items = list(read_tfds_images(name, "test"))
    assert len(items) == 3
    for record_name, image, class_id in items:
        assert isinstance(record_name, str)
        assert not record_name.endswith(".jpg")
        assert image.dtype == np.uint8
        assert image.ndim == 3
        assert image.shape[-1] == 3
        assert 1 <= class_id <= (102 if name == "oxford_flowers102" else 200)


def test_tfds_unknown_name():
    with pytest.raises(ValueError, match="caltech_birds2011, oxford_flowers102"):
        next(read_tfds_images("mnist", "train"))
