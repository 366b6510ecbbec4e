"""The exported SavedModel and sdn-generate on bad and unusual captions.

The SavedModel is loaded in a separate Python whose sys.path lacks this
repository, as a user without sdn_tf would load it.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sdn_tf.data.records import ImageRecord
from sdn_tf.export import export
from sdn_tf.text.encoder import MAX_LENGTH
from sdn_tf.text.train import train_text_encoder
from sdn_tf.generator import build_generator
from sdn_tf.train import GENERATOR_WEIGHTS, SDNConfig, train

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64
LONG_CAPTION = ("a small red bird with black wings and a short orange beak " * 10)[:500]
THOUSAND = [f"a bird number {index} with {index % 7} red spots" for index in range(1000)]

# Runs in the child Python: drops the repository (put on sys.path by the
# editable install) before anything is imported, then serves each case.
SERVE_SCRIPT = r"""
import json, os, sys
repo, model_dir, cases_path, output_path = sys.argv[1:]
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != repo]
try:
    import sdn_tf  # noqa: F401
    sdn_tf_importable = True
except ImportError:
    sdn_tf_importable = False
import numpy as np
import tensorflow as tf

serve = tf.saved_model.load(model_dir).signatures["serving_default"]
with open(cases_path, encoding="utf-8") as file:
    cases = json.load(file)
arrays = {}
for name, captions in cases.items():
    outputs = serve(captions=tf.constant(captions, dtype=tf.string, shape=[len(captions)]))
    arrays[name] = outputs["images"].numpy()
    arrays[name + "_all"] = outputs["all_images"].numpy()
np.savez(output_path, **arrays)
print(json.dumps({"sdn_tf_importable": sdn_tf_importable, "sys_path": sys.path}))
"""

CASES = {
    "empty": [""],
    "long": [LONG_CAPTION, LONG_CAPTION[:MAX_LENGTH]],
    "non_ascii": ["un oiseau rouge é 🐦", "un oiseau rouge ü 🦜"],
    "different": ["a red bird", "a small blue circle in the centre"],
    "zero": [],
    "thousand": THOUSAND,
    "single_last": [THOUSAND[-1]],
}


# Building the model for serving takes minutes on a loaded 2-core machine.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export a run of zero training steps with a one-step text encoder.

    A zero-step run is a finished run whose generator keeps its seeded
    initial weights. Serving does not depend on how far training went, and
    each training step would add half a minute of graph compilation on CPU.
    """
    root = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    records = []
    for index in range(6):
        path = root / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(name=f"image{index}", image_path=str(path),
                                   captions=["a red bird", "a small blue circle"],
                                   class_id=index % 2))
    text_dir = str(root / "text")
    train_text_encoder(dict(workdir=text_dir, dataset="folder", image_size=IMAGE_SIZE,
                            teacher_weights="random", embedding_dim=16, batch_size=4,
                            max_steps=1, feature_batch_size=8, precision="float32"), records)
    sdn_dir = str(root / "sdn")
    train(SDNConfig(workdir=sdn_dir, text_encoder=text_dir, teacher_weights="random",
                    batch_size=4, epochs=0, max_steps=0, precision="float32",
                    init_image_bias=True),
          records, records[:2])
    amplify_caption_effect(sdn_dir)
    return export(sdn_dir, str(root / "export"))


def amplify_caption_effect(workdir):
    """Scale the output layer so that captions change the uint8 images.

    The untrained generator's output varies by less than one grey level
    between captions; the equality tests need images that differ.
    """
    generator = build_generator(IMAGE_SIZE, 16, 1)
    path = os.path.join(workdir, GENERATOR_WEIGHTS)
    generator.load_weights(path)
    layer = generator.get_layer("g_img")
    layer.kernel.assign(layer.kernel * 300.0)
    generator.save_weights(path)


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    """Serve every case of CASES in a Python that cannot import sdn_tf."""
    folder = tmp_path_factory.mktemp("served")
    script = folder / "serve.py"
    script.write_text(SERVE_SCRIPT, encoding="utf-8")
    cases_path = folder / "cases.json"
    cases_path.write_text(json.dumps(CASES), encoding="utf-8")
    output_path = folder / "outputs.npz"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(script), os.path.realpath(REPO), exported, str(cases_path),
         str(output_path)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(output_path) as arrays:
        return report, dict(arrays)


@slow
def test_loads_without_sdn_tf(served):
    report, _ = served
    assert not report["sdn_tf_importable"]
    assert str(REPO) not in report["sys_path"]


@slow
def test_empty_caption_gives_image(served):
    _, arrays = served
    assert arrays["empty"].dtype == np.uint8
    assert arrays["empty"].shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert arrays["empty_all"].shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE, 3)


@slow
def test_captions_change_images(served):
    # Guards the equality tests below: they mean something only if the
    # exported model draws different images for different captions.
    _, arrays = served
    first, second = arrays["different"]
    assert not np.array_equal(first, second)


@slow
def test_long_caption_cut_at_max_length(served):
    _, arrays = served
    long, cut = arrays["long"]
    assert arrays["long"].dtype == np.uint8
    np.testing.assert_array_equal(long, cut)


@slow
def test_unknown_characters_read_alike(served):
    # Characters outside the 70-character alphabet become all-zero rows, one
    # per Unicode code point, so "é 🐦" and "ü 🦜" encode identically.
    _, arrays = served
    images = arrays["non_ascii"]
    assert images.dtype == np.uint8
    assert images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(images[0], images[1])


@slow
def test_zero_captions_give_empty_batch(served):
    _, arrays = served
    assert arrays["zero"].shape == (0, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert arrays["zero"].dtype == np.uint8
    assert arrays["zero_all"].shape == (0, 1, IMAGE_SIZE, IMAGE_SIZE, 3)


@slow
def test_thousand_captions_in_chunks(served):
    _, arrays = served
    assert arrays["thousand"].shape == (1000, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert arrays["thousand"].dtype == np.uint8
    # The last caption sits in the last, partial chunk of 32; chunking must
    # not change its image.
    np.testing.assert_array_equal(arrays["thousand"][-1], arrays["single_last"][0])


def run_generate(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sdn_tf.cli.generate", *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def generated(exported, tmp_path_factory):
    """Run sdn-generate once on a normal, an empty and an over-long caption."""
    output_dir = tmp_path_factory.mktemp("generated")
    long_caption = "x" * 250
    result = run_generate(f"--model={exported}", "--captions=a red bird", "--captions=",
                          f"--captions={long_caption}", f"--output_dir={output_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result, output_dir


@slow
def test_generate_warns_long_caption(generated):
    result, _ = generated
    assert "Caption 3 has 250 characters" in result.stderr


@slow
def test_generate_warns_empty_caption(generated):
    result, _ = generated
    assert "Caption 2 is empty" in result.stderr


@slow
def test_generate_writes_png_per_caption(generated):
    _, output_dir = generated
    names = sorted(path.name for path in output_dir.iterdir())
    assert names == ["0001.png", "0002.png", "0003.png", "captions.txt",
                     "contact_sheet.png"]
    with Image.open(output_dir / "0001.png") as image:
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_generate_rejects_empty_file(tmp_path):
    captions_file = tmp_path / "captions.txt"
    captions_file.write_text("\n  \n", encoding="utf-8")
    result = run_generate(f"--model={tmp_path}", f"--captions_file={captions_file}")
    assert result.returncode != 0
    assert "contains no captions" in result.stderr
    assert str(captions_file) in result.stderr


def test_generate_rejects_both_caption_flags(tmp_path):
    captions_file = tmp_path / "captions.txt"
    captions_file.write_text("a red bird\n", encoding="utf-8")
    result = run_generate(f"--model={tmp_path}", "--captions=a blue bird",
                          f"--captions_file={captions_file}")
    assert result.returncode != 0
    assert "either --captions or --captions_file, not both" in result.stderr


def test_generate_rejects_folder_without_model(tmp_path):
    result = run_generate(f"--model={tmp_path}", "--captions=a red bird")
    assert result.returncode != 0
    assert f"{str(tmp_path)!r} holds no SavedModel" in result.stderr
    assert "saved_model.pb" in result.stderr


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    """Save a SavedModel with the exported signature that draws black 8x8 images.

    The tests of sdn-generate's own logic need no trained networks, and this
    model saves in seconds where the real export takes minutes.
    """
    import tensorflow as tf

    class BlackImages(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="captions")])
        def serve(self, captions):
            images = tf.zeros([tf.shape(captions)[0], 1, 8, 8, 3], tf.uint8)
            return {"images": images[:, 0], "all_images": images}

    folder = tmp_path_factory.mktemp("fake_model")
    module = BlackImages()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def test_generate_keeps_commas_in_caption(fake_model, tmp_path):
    captions = ["a small bird, red with black wings", "a yellow flower"]
    result = run_generate(f"--model={fake_model}", f"--captions={captions[0]}",
                          f"--captions={captions[1]}", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "captions.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [f"0001\t{captions[0]}", f"0002\t{captions[1]}"]
    assert "Wrote 2 images and contact_sheet.png" in result.stderr


def test_generate_logs_one_image(fake_model, tmp_path):
    result = run_generate(f"--model={fake_model}", "--captions=a red bird",
                          f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Wrote 1 image and contact_sheet.png" in result.stderr


def test_generate_warns_unreadable_captions(fake_model, tmp_path):
    captions_file = tmp_path / "captions.txt"
    captions_file.write_text("赤い鳥\na red bird\n青い 鳥\n", encoding="utf-8")
    result = run_generate(f"--model={fake_model}", f"--captions_file={captions_file}",
                          f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("2 of 3 captions (numbers 1, 3) contain no character that the text encoder "
            "reads") in result.stderr


def test_generate_rejects_latin1_file(tmp_path):
    captions_file = tmp_path / "captions.txt"
    captions_file.write_bytes("a red bird\nun oiseau à bec rouge\n".encode("latin-1"))
    result = run_generate(f"--model={tmp_path}", f"--captions_file={captions_file}")
    assert result.returncode == 1
    assert f"Captions file {str(captions_file)!r} is not valid UTF-8" in result.stderr
    assert "on line 2, byte 11 is 0xe0" in result.stderr
    assert "Save the file as UTF-8" in result.stderr


def test_read_captions_file_drops_byte_order_mark(tmp_path):
    from sdn_tf.generate import read_captions_file

    captions_file = tmp_path / "captions.txt"
    captions_file.write_text("a red bird\n\nun oiseau à bec rouge\n", encoding="utf-8-sig")
    assert read_captions_file(str(captions_file)) == ["a red bird", "un oiseau à bec rouge"]


def test_unreadable_captions_lists_numbers(caplog):
    from sdn_tf.generate import warn_unreadable_captions

    captions = ["赤い鳥"] * 12 + ["", "   ", "a red bird", "小鳥!"]
    assert warn_unreadable_captions(captions, max_listed=10) == list(range(1, 13))
    message = caplog.records[-1].getMessage()
    assert message.startswith("12 of 16 captions (numbers 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 "
                              "and 2 more) contain no character")


def test_captions_file_folder_and_missing_file(tmp_path):
    from sdn_tf.generate import read_captions_file

    with pytest.raises(IsADirectoryError, match="is a folder.*one caption per line"):
        read_captions_file(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found. Check the path.*--captions"):
        read_captions_file(str(tmp_path / "nope.txt"))


def test_caption_label_wraps_at_words():
    from sdn_tf.generate import caption_label

    lines = caption_label("a small red circle in the top left corner on a grey background", 22)
    assert len(lines) == 2
    assert lines[0] == "a small red circle in"
    assert lines[1].endswith("...")
    assert all(len(line) <= 22 for line in lines)
    assert caption_label("a bird", 22) == ["a bird"]
    assert caption_label("", 22) == [""]
