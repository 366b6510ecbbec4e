"""tools/class_captions.py: captioned folders from class labels, and its input checks."""

import functools
import json
from pathlib import Path

import pytest
from PIL import Image

from sdn_tf.data.folder import read_folder

REPO = Path(__file__).resolve().parents[1]
FLOWERS_DATA = REPO.parent / "shared" / "data" / "flowers102"
needs_flowers = pytest.mark.skipif(not FLOWERS_DATA.is_dir(),
                                   reason="../shared/data/flowers102 is not available")


@pytest.fixture
def class_captions(run_tool):
    return functools.partial(run_tool, "class_captions")


def make_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / f"{name}.jpg")


def write_labels(path, rows, header="image,label,class_name"):
    path.write_text(header + "\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))


@needs_flowers
def test_flowers_split_by_class(tmp_path, class_captions):
    result = class_captions(f"--labels={FLOWERS_DATA / 'imagelabels.csv'}",
                      f"--images={FLOWERS_DATA / 'jpg'}", f"--out={tmp_path}",
                      "--test_classes=6,10,49,67")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["test_images"] == 45 + 45 + 49 + 42
    assert summary["train_images"] == 957 - summary["test_images"]
    train = read_folder(tmp_path, "train")
    test = read_folder(tmp_path, "test")
    assert len(train) == summary["train_images"]
    assert {record.class_id for record in test} == {6, 10, 49, 67}
    assert not {record.class_id for record in train} & {6, 10, 49, 67}
    daisy = next(record for record in test if record.class_id == 49)
    assert len(daisy.captions) == 10
    assert all("oxeye daisy" in caption for caption in daisy.captions)
    assert "a photo of an oxeye daisy" in daisy.captions
    assert not any("a oxeye" in caption for caption in daisy.captions)
    assert Path(daisy.image_path).is_file()


def test_default_holds_out_highest_classes(tmp_path, class_captions):
    make_images(tmp_path / "jpg", ["a", "b", "c"])
    write_labels(tmp_path / "labels.csv", [("a", 1, "rose"), ("b", 2, "iris"), ("c", 3, "lily")])
    result = class_captions(f"--labels={tmp_path / 'labels.csv'}", f"--images={tmp_path / 'jpg'}",
                      f"--out={tmp_path / 'out'}", "--num_test_classes=1")
    assert result.returncode == 0, result.stderr
    assert [r.class_id for r in read_folder(tmp_path / "out", "test")] == [3]
    assert [r.class_id for r in read_folder(tmp_path / "out", "train")] == [1, 2]


def test_missing_image_counted(tmp_path, class_captions):
    make_images(tmp_path / "jpg", ["a", "b"])
    write_labels(tmp_path / "labels.csv", [("a", 1, "rose"), ("b", 2, "iris"),
                                           ("gone", 2, "iris")])
    result = class_captions(f"--labels={tmp_path / 'labels.csv'}", f"--images={tmp_path / 'jpg'}",
                      f"--out={tmp_path / 'out'}", "--num_test_classes=1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["skipped_missing"] == 1
    assert "gone.jpg" in result.stderr


@pytest.mark.parametrize("rows, header, args, message", [
    ([("a", 1, "rose")], "image,label", [], "class_name"),
    ([("a", "one", "rose")], "image,label,class_name", [], "label 'one'"),
    ([("a", 1, "rose"), ("b", 2, "iris")], "image,label,class_name", ["--test_classes=7"],
     "7"),
    ([("a", 1, "rose"), ("b", 2, "iris")], "image,label,class_name",
     ["--test_classes=1,2"], "no training class"),
])
def test_bad_labels_rejected(tmp_path, rows, header, args, message, class_captions):
    make_images(tmp_path / "jpg", ["a", "b"])
    write_labels(tmp_path / "labels.csv", rows, header)
    result = class_captions(f"--labels={tmp_path / 'labels.csv'}", f"--images={tmp_path / 'jpg'}",
                      f"--out={tmp_path / 'out'}", *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_missing_labels_file(tmp_path, class_captions):
    result = class_captions(f"--labels={tmp_path / 'none.csv'}", f"--images={tmp_path}",
                      f"--out={tmp_path / 'out'}")
    assert result.returncode != 0
    assert "none.csv does not exist" in result.stderr
