"""Tests of the `shapes` dataset: building, caching, reading, captions and the colour evaluator."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import color as skcolor

from sdn_tf.data import shapes
from sdn_tf.data.records import ImageRecord

SMALL = dict(image_size=64, images_per_class_train=2, images_per_class_test=2)


def _read_rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _files_with_bytes(folder):
    contents = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                contents[os.path.relpath(path, folder)] = f.read()
    return contents


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return shapes.build_shapes(tmp_path_factory.mktemp("cache") / "shapes-v4", **SMALL)


@pytest.fixture(scope="module")
def records(dataset):
    return {split: shapes.load_shapes_split(dataset, split) for split in shapes.SPLITS}


@pytest.fixture
def dataset_copy(dataset, tmp_path):
    """A private copy that a test may damage."""
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    return str(copy)


# --- Building and caching ---------------------------------------------------


def test_build_same_seed_identical(tmp_path):
    first = shapes.build_shapes(tmp_path / "a", seed=3, **SMALL)
    second = shapes.build_shapes(tmp_path / "b", seed=3, **SMALL)
    first_files = _files_with_bytes(first)
    assert len(first_files) > 0
    assert first_files == _files_with_bytes(second)


def test_build_other_seed_differs(tmp_path):
    first = _files_with_bytes(shapes.build_shapes(tmp_path / "a", seed=3, **SMALL))
    second = _files_with_bytes(shapes.build_shapes(tmp_path / "b", seed=4, **SMALL))
    assert first.keys() == second.keys()
    changed = [name for name in first
               if name.endswith(".png") and first[name] != second[name]]
    assert len(changed) > 0.9 * sum(name.endswith(".png") for name in first)


def test_layout_and_counts(dataset):
    assert os.path.isfile(os.path.join(dataset, "COMPLETE"))
    with open(os.path.join(dataset, "params.json")) as f:
        params = json.load(f)
    assert params["image_size"] == 64
    for split, classes in (("train", 24), ("test", 8)):
        with open(os.path.join(dataset, split, "metadata.jsonl")) as f:
            entries = [json.loads(line) for line in f]
        assert len(entries) == classes * 2
        for entry in entries:
            assert entry["file_name"].startswith("images/")
            assert os.path.isfile(os.path.join(dataset, split, entry["file_name"]))
            assert len(entry["text"]) == 10


def test_cache_reused(dataset):
    image = os.path.join(dataset, "train", "images", "00000.png")
    before = os.stat(image).st_mtime_ns
    assert shapes.build_shapes(os.path.dirname(dataset) + "/shapes-v4", **SMALL) == dataset
    assert os.stat(image).st_mtime_ns == before


def test_rebuild_after_deleted_marker(dataset, dataset_copy):
    image = os.path.join(dataset_copy, "train", "images", "00000.png")
    with open(image, "wb") as f:
        f.write(b"damaged")
    os.remove(os.path.join(dataset_copy, "COMPLETE"))

    assert shapes.build_shapes(dataset_copy, **SMALL) == dataset_copy
    assert os.path.isfile(os.path.join(dataset_copy, "COMPLETE"))
    assert _files_with_bytes(dataset_copy) == _files_with_bytes(dataset)


def test_rebuild_half_written_folder(dataset, tmp_path):
    root = tmp_path / "shapes-v4"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "images" / "00000.png").write_bytes(b"partial")

    assert shapes.build_shapes(root, **SMALL) == str(root)
    assert _files_with_bytes(root) == _files_with_bytes(dataset)


def test_foreign_folder_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(ValueError, match="notes.txt"):
        shapes.build_shapes(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "not a dataset"


def test_other_params_use_sibling(dataset):
    root = os.path.dirname(dataset) + "/shapes-v4"
    other = shapes.build_shapes(root, seed=5, **SMALL)
    assert other == root + "-seed5-64px-train2-test2"
    with open(os.path.join(root, "params.json")) as f:
        assert json.load(f)["seed"] == 0
    with open(os.path.join(other, "params.json")) as f:
        assert json.load(f)["seed"] == 5


def test_no_staging_folder_left(tmp_path):
    shapes.build_shapes(tmp_path / "shapes-v4", **SMALL)
    assert sorted(os.listdir(tmp_path)) == ["shapes-v4"]


@pytest.mark.parametrize("name, value", [
    ("seed", -1), ("image_size", 16), ("images_per_class_train", 0),
    ("images_per_class_test", 1.5), ("backgrounds", "dark"),
])
def test_invalid_parameter_rejected(tmp_path, name, value):
    kwargs = dict(SMALL, **{name: value})
    with pytest.raises(ValueError, match=name):
        shapes.build_shapes(tmp_path / "shapes-v4", **kwargs)
    assert not (tmp_path / "shapes-v4").exists()


def test_default_backgrounds_are_light(records):
    light = set(shapes.BACKGROUND_SETS["light"])
    assert light == {"white", "cream", "beige", "light grey"}
    for split in shapes.SPLITS:
        seen = {r.attributes["background"] for r in records[split]}
        assert seen <= light, seen - light


def test_all_backgrounds_include_dark_ones(tmp_path):
    folder = shapes.build_shapes(tmp_path / "all", backgrounds="all", image_size=32,
                                 images_per_class_train=6, images_per_class_test=1)
    seen = {r.attributes["background"] for r in shapes.load_shapes_split(folder, "train")}
    assert seen == set(shapes.BACKGROUND_RGB), seen
    with open(os.path.join(folder, "params.json")) as f:
        assert json.load(f)["backgrounds"] == "all"


def test_other_backgrounds_use_sibling(dataset):
    root = os.path.dirname(dataset) + "/shapes-v4"
    other = shapes.build_shapes(root, backgrounds="all", **SMALL)
    assert other == root + "-seed0-64px-train2-test2-all"


def test_open_shapes_reads_build_as_is(tmp_path):
    folder = shapes.build_shapes(tmp_path / "all", backgrounds="all", **SMALL)
    assert shapes.open_shapes(folder) == folder
    assert sorted(os.listdir(tmp_path)) == ["all"]


def test_load_split_reads_data_dir_build(tmp_path):
    from sdn_tf.data.datasets import load_split

    folder = shapes.build_shapes(tmp_path / "all", backgrounds="all", image_size=32,
                                 images_per_class_train=6, images_per_class_test=1)
    records = load_split("shapes", folder, "train")
    assert {r.attributes["background"] for r in records} == set(shapes.BACKGROUND_RGB)


def test_open_shapes_builds_default(tmp_path):
    folder = shapes.open_shapes(tmp_path / "new")
    with open(os.path.join(folder, "params.json")) as f:
        params = json.load(f)
    assert folder == str(tmp_path / "new")
    assert params["backgrounds"] == shapes.DEFAULT_BACKGROUNDS
    assert params["format_version"] == shapes.FORMAT_VERSION


def test_open_shapes_unreadable_params_named(dataset_copy):
    with open(os.path.join(dataset_copy, "params.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="params.json.*delete the folder"):
        shapes.open_shapes(dataset_copy)


def test_default_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SDN_TF_DATA_DIR", str(tmp_path))
    assert shapes.default_shapes_dir() == os.path.join(str(tmp_path), "shapes-v4")
    monkeypatch.delenv("SDN_TF_DATA_DIR")
    expected = os.path.join(os.path.expanduser("~"), ".cache", "sdn_tf", "shapes-v4")
    assert shapes.default_shapes_dir() == expected


# --- Classes and split ------------------------------------------------------


def test_split_class_disjoint(records):
    train_ids = {r.class_id for r in records["train"]}
    test_ids = {r.class_id for r in records["test"]}
    assert len(train_ids) == 24
    assert len(test_ids) == 8
    assert train_ids.isdisjoint(test_ids)


def test_train_has_every_colour_and_shape(records):
    attributes = [r.attributes for r in records["train"]]
    assert {a["colour"] for a in attributes} == set(shapes.COLOURS)
    assert {a["shape"] for a in attributes} == set(shapes.SHAPES)


def test_class_id_matches_attributes(records):
    for record in records["train"] + records["test"]:
        colour, shape = record.attributes["colour"], record.attributes["shape"]
        assert record.class_id == (shapes.COLOURS.index(colour) * 4
                                   + shapes.SHAPES.index(shape))


def test_records_have_scene_attributes(records):
    record = records["test"][0]
    assert record.name == "test/00000"
    assert _read_rgb(record.image_path).shape == (64, 64, 3)
    assert record.attributes["size"] in shapes.SIZES
    assert record.attributes["position"] in shapes.POSITIONS
    assert record.attributes["background"] in shapes.BACKGROUND_RGB


def test_colours_well_separated():
    hues = sorted(shapes.COLOUR_HUES.values())
    gaps = np.diff(hues + [hues[0] + 360.0])
    assert gaps.min() >= 25.0


# --- Captions ---------------------------------------------------------------


def test_captions_distinct_and_complete(records):
    for record in records["train"] + records["test"]:
        attributes = record.attributes
        assert len(set(record.captions)) == 10
        for caption in record.captions:
            assert attributes["colour"] in caption
            assert attributes["shape"] in caption
            assert any(w in caption for w in shapes.SIZE_WORDS[attributes["size"]])
            assert any(p in caption for p in shapes.POSITION_PHRASES[attributes["position"]])
            assert attributes["background"] in caption
            assert len(caption) <= 200
            assert caption == caption.lower()
            assert caption.isascii()


def test_captions_use_an_before_vowel(records):
    captions = [c for r in records["train"] + records["test"] for c in r.captions]
    assert not any(" a orange" in c or c.startswith("a orange") for c in captions)
    assert any("an orange" in c for c in captions)


# --- Reading bad metadata ---------------------------------------------------


def _rewrite_metadata_line(folder, split, change):
    path = os.path.join(folder, split, "metadata.jsonl")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[1] = change(lines[1])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_bad_json_names_line(dataset_copy):
    path = _rewrite_metadata_line(dataset_copy, "train", lambda line: line[:-5])
    with pytest.raises(ValueError, match=f"{path}:2"):
        shapes.load_shapes_split(dataset_copy, "train")


def test_bad_class_id_rejected(dataset_copy):
    def change(line):
        entry = json.loads(line)
        entry["class_id"] += 1
        return json.dumps(entry)
    _rewrite_metadata_line(dataset_copy, "test", change)
    with pytest.raises(ValueError, match="class_id"):
        shapes.load_shapes_split(dataset_copy, "test")


def test_unknown_colour_rejected(dataset_copy):
    def change(line):
        entry = json.loads(line)
        entry["colour"] = "teal"
        return json.dumps(entry)
    _rewrite_metadata_line(dataset_copy, "train", change)
    with pytest.raises(ValueError, match="teal"):
        shapes.load_shapes_split(dataset_copy, "train")


def test_missing_metadata_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        shapes.load_shapes_split(tmp_path, "train")


def test_missing_image_raises(dataset_copy):
    os.remove(os.path.join(dataset_copy, "train", "images", "00003.png"))
    with pytest.raises(FileNotFoundError, match="00003.png"):
        shapes.load_shapes_split(dataset_copy, "train")


def test_unknown_split_rejected(dataset):
    with pytest.raises(ValueError, match="validation"):
        shapes.load_shapes_split(dataset, "validation")


# --- Colour evaluator -------------------------------------------------------


@pytest.mark.parametrize("split", shapes.SPLITS)
def test_colour_accuracy_rendered(records, split):
    images = [_read_rgb(r.image_path) for r in records[split]]
    result = shapes.colour_accuracy(images, [r.attributes["colour"] for r in records[split]])
    assert result["count"] == len(images)
    assert result["accuracy"] >= 0.98
    assert result["no_colour"] == 0
    assert set(result["per_colour"]) == set(shapes.COLOURS)


def test_colour_survives_blur_and_downsampling(tmp_path):
    folder = shapes.build_shapes(tmp_path / "shapes-v4", image_size=128,
                                 images_per_class_train=1, images_per_class_test=1)
    images, colours = [], []
    for split in shapes.SPLITS:
        for record in shapes.load_shapes_split(folder, split):
            with Image.open(record.image_path) as image:
                small = image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
            images.append(np.asarray(small.filter(ImageFilter.GaussianBlur(3))))
            colours.append(record.attributes["colour"])
    result = shapes.colour_accuracy(images, colours)
    assert result["accuracy"] >= 0.98


def test_grey_image_has_no_colour():
    assert shapes.colour_of_image(np.full((64, 64, 3), 128, np.uint8)) is None


@pytest.mark.parametrize("style", shapes.BACKGROUND_STYLES)
def test_backgrounds_have_no_colour(style):
    rng = np.random.default_rng(0)
    for name in shapes.BACKGROUND_RGB:
        background = shapes._render_background(name, style, 64, rng)
        image = np.rint(background).astype(np.uint8)
        assert shapes.colour_of_image(image) is None, name


def test_hue_rotation_changes_colour(records):
    rotated_images, expected = [], []
    for record in records["train"]:
        colour = record.attributes["colour"]
        target = shapes.COLOURS[(shapes.COLOURS.index(colour) + 3) % 8]
        hsv = skcolor.rgb2hsv(_read_rgb(record.image_path))
        shift = (shapes.COLOUR_HUES[target] - shapes.COLOUR_HUES[colour]) / 360.0
        hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
        rotated = np.rint(skcolor.hsv2rgb(hsv) * 255).astype(np.uint8)
        rotated_images.append(rotated)
        expected.append(target)
    result = shapes.colour_accuracy(rotated_images, expected)
    assert result["accuracy"] >= 0.98


def test_hue_wraps_around_to_red():
    # (230, 20, 40) has hue 354 degrees, 6 degrees from red across 0 and 29 from pink.
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = (230, 20, 40)
    assert shapes.colour_of_image(image) == "red"


def test_colour_of_image_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        shapes.colour_of_image(np.zeros((8, 8, 3), np.float32))


def test_colour_accuracy_counts_misses():
    red = np.zeros((32, 32, 3), np.uint8)
    red[8:24, 8:24] = shapes.COLOUR_RGB["red"]
    grey = np.full((32, 32, 3), 100, np.uint8)
    result = shapes.colour_accuracy([red, red, grey], ["red", "blue", "blue"])
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["no_colour"] == 1
    assert result["per_colour"] == {"red": 1.0, "blue": 0.0}
    assert result["predictions"] == ["red", "red", None]


def test_colour_accuracy_length_mismatch():
    with pytest.raises(ValueError, match="2 colours"):
        shapes.colour_accuracy([np.zeros((8, 8, 3), np.uint8)], ["red", "blue"])


def test_evaluate_colour_seen_unseen(records):
    chosen = records["train"][:6] + records["test"][:4]
    images = [_read_rgb(r.image_path) for r in chosen]
    result = shapes.evaluate_colour(images, chosen)
    assert result["all"]["count"] == 10
    assert result["seen"]["count"] == 6
    assert result["unseen"]["count"] == 4
    assert result["unseen"]["accuracy"] == 1.0


def test_evaluate_colour_empty_group_none(records):
    chosen = records["test"]
    images = [_read_rgb(r.image_path) for r in chosen]
    result = shapes.evaluate_colour(images, chosen)
    assert result["seen"] is None
    assert result["unseen"]["count"] == len(chosen)


def test_evaluate_colour_needs_attributes(records):
    record = records["train"][0]
    bare = ImageRecord(name="x", image_path=record.image_path,
                       captions=record.captions, class_id=record.class_id)
    with pytest.raises(ValueError, match="attributes"):
        shapes.evaluate_colour([_read_rgb(record.image_path)], [bare])


# --- tools/build_shapes.py ----------------------------------------------------

def test_build_tool_writes_variant(tmp_path, run_tool):
    result = run_tool("build_shapes", f"--output_dir={tmp_path / 'all'}", "--backgrounds=all",
                             "--image_size=32", "--images_per_class_train=6",
                             "--images_per_class_test=1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["folder"] == str(tmp_path / "all")
    assert report["params"]["backgrounds"] == "all"
    seen = {r.attributes["background"]
            for r in shapes.load_shapes_split(report["folder"], "train")}
    assert seen == set(shapes.BACKGROUND_RGB)


def test_build_tool_rejects_file_output(tmp_path, run_tool):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    result = run_tool("build_shapes", f"--output_dir={target}")
    assert result.returncode == 1
    assert f"--output_dir={target} is a file" in result.stderr
    assert target.read_text() == "keep"
