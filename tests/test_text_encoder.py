"""Tests of the char-CNN-RNN text encoder, its DS-SJE loss, training and the sdn-train-text CLI."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sdn_tf.data.records import ImageRecord
from sdn_tf.text import encoder as enc
from sdn_tf.teacher import build_teacher
from sdn_tf.text import train as text_train
from sdn_tf.workdir import WorkdirError, open_workdir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _indices(onehot_row):
    """Return the alphabet index of each position, -1 for an all-zero row."""
    return np.where(onehot_row.sum(axis=-1) > 0, onehot_row.argmax(axis=-1), -1)


# --- Character encoding ------------------------------------------------------------


def test_alphabet_has_70_distinct_symbols():
    assert len(enc.ALPHABET) == 70
    assert len(set(enc.ALPHABET)) == 70


def test_onehot_shape_and_dtype():
    onehot = enc.captions_to_onehot(["a bird", "x"])
    assert onehot.shape == (2, enc.MAX_LENGTH, 70)
    assert onehot.dtype == tf.float32


def test_onehot_index_positions():
    onehot = enc.captions_to_onehot(["ab z9!"]).numpy()[0]
    expected = [enc.ALPHABET.index(c) for c in "ab z9!"]
    np.testing.assert_array_equal(_indices(onehot)[:6], expected)
    assert onehot[:6].sum() == 6
    assert onehot[6:].sum() == 0


def test_onehot_lowercases():
    upper = enc.captions_to_onehot(["A Red BIRD"]).numpy()
    lower = enc.captions_to_onehot(["a red bird"]).numpy()
    np.testing.assert_array_equal(upper, lower)


def test_onehot_unknown_characters_are_zero():
    onehot = enc.captions_to_onehot(["a\tb\u00e9c\U0001F426d"]).numpy()[0]
    # Positions: a, tab, b, e-acute, c, bird emoji, d; one position per character.
    np.testing.assert_array_equal(
        _indices(onehot)[:8], [0, -1, 1, -1, 2, -1, 3, -1])


def test_onehot_invalid_utf8_is_zero():
    onehot = enc.captions_to_onehot([b"caf\xe9 x"]).numpy()[0]
    np.testing.assert_array_equal(_indices(onehot)[:6], [2, 0, 5, -1, 68, 23])


def test_onehot_truncates_at_max_length():
    onehot = enc.captions_to_onehot(["b" * 300]).numpy()[0]
    assert onehot.shape[0] == 201
    assert onehot[:, enc.ALPHABET.index("b")].sum() == 201


def test_length_exceeds_flags_long_captions():
    flags = enc.caption_length_exceeds(["a" * 201, "a" * 202, ""]).numpy()
    np.testing.assert_array_equal(flags, [False, True, False])


def test_onehot_empty_string_is_zero():
    onehot = enc.captions_to_onehot(["", "a"]).numpy()
    assert onehot[0].sum() == 0
    assert onehot[1].sum() == 1


def test_onehot_inside_tf_function():
    encode = tf.function(enc.captions_to_onehot,
                         input_signature=[tf.TensorSpec([None], tf.string)])
    np.testing.assert_array_equal(encode(tf.constant(["Hi there"])).numpy(),
                                  enc.captions_to_onehot(["hi there"]).numpy())


def test_onehot_in_saved_model(tmp_path):
    module = tf.Module()
    module.encode = tf.function(enc.captions_to_onehot,
                                input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    captions = tf.constant(["A red circle", "caf\u00e9", ""])
    np.testing.assert_array_equal(loaded.encode(captions).numpy(),
                                  enc.captions_to_onehot(captions).numpy())


def test_onehot_rejects_scalar_caption():
    with pytest.raises(ValueError, match="1-D batch"):
        enc.captions_to_onehot("a single caption")


# --- Model -------------------------------------------------------------------


def test_cnn_leaves_eight_steps():
    model = enc.build_text_encoder(embedding_dim=16)
    assert enc.cnn_output_steps(model) == enc.CNN_OUTPUT_STEPS == 8


@pytest.mark.parametrize("rnn, layer", [("gru", "gru"), ("rnn", "rnn")])
def test_encoder_output_shape(rnn, layer):
    model = enc.build_text_encoder(embedding_dim=24, rnn=rnn)
    output = model(enc.captions_to_onehot(["a red circle", "", "x" * 250]))
    assert output.shape == (3, 24)
    assert model.get_layer(layer).units == 512


def test_encoder_rejects_unknown_rnn():
    with pytest.raises(ValueError, match="lstm"):
        enc.build_text_encoder(rnn="lstm")


def test_embed_matches_embed_tensor():
    encoder = enc.TextEncoder(enc.build_text_encoder(embedding_dim=8))
    captions = ["a red circle", "a blue square", "a green cross"]
    batched = encoder.embed(captions, batch_size=2)
    direct = encoder.embed_tensor(tf.constant(captions)).numpy()
    assert batched.shape == (3, 8)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, direct, rtol=1e-5, atol=1e-6)


def test_embed_empty_list():
    encoder = enc.TextEncoder(enc.build_text_encoder(embedding_dim=8))
    assert encoder.embed([]).shape == (0, 8)


# --- DS-SJE loss ------------------------------------------------------------------


def _numpy_ds_sje(image, text, classes, margin):
    scores = image @ text.T
    total, count = 0.0, 0
    for i in range(len(classes)):
        for j in range(len(classes)):
            if classes[i] == classes[j]:
                continue
            total += max(0.0, margin + scores[i, j] - scores[i, i])  # image side, row i
            total += max(0.0, margin + scores[i, j] - scores[j, j])  # text side, column j
            count += 1
    best = scores.argmax(axis=1)
    accuracy = np.mean(classes[best] == classes)
    return total / max(count, 1), accuracy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ds_sje_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(9, 5)).astype(np.float32)
    text = rng.normal(size=(9, 5)).astype(np.float32)
    classes = np.array([0, 1, 1, 2, 0, 3, 3, 3, 1])  # duplicate classes
    loss, accuracy = enc.ds_sje_loss(image, text, classes, margin=0.7)
    expected_loss, expected_accuracy = _numpy_ds_sje(image, text, classes, 0.7)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    assert float(accuracy) == pytest.approx(expected_accuracy)


def test_ds_sje_ignores_same_class_pairs():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(4, 6)).astype(np.float32)
    text = rng.normal(size=(4, 6)).astype(np.float32)
    loss, accuracy = enc.ds_sje_loss(image, text, np.zeros(4, np.int64))
    assert float(loss) == 0.0
    assert float(accuracy) == 1.0


def test_ds_sje_zero_when_separated():
    # Each image scores its own caption 10 and every other caption 0.
    embeddings = np.eye(4, dtype=np.float32) * np.sqrt(10.0)
    loss, accuracy = enc.ds_sje_loss(embeddings, embeddings, np.arange(4))
    assert float(loss) == 0.0
    assert float(accuracy) == 1.0


# --- Training data order ----------------------------------------------------------


def test_schedule_covers_each_pair_once_per_epoch():
    schedule = text_train.PairSchedule(num_pairs=10, batch_size=5, seed=0)
    first_epoch = np.concatenate([schedule.batch(0), schedule.batch(1)])
    assert sorted(first_epoch) == list(range(10))


def test_schedule_wraps_across_epochs():
    schedule = text_train.PairSchedule(num_pairs=10, batch_size=4, seed=0)
    pairs = np.concatenate([schedule.batch(step) for step in range(5)])  # 20 = 2 epochs
    assert sorted(pairs[:10]) == list(range(10))
    assert sorted(pairs[10:]) == list(range(10))


def test_schedule_depends_only_on_step():
    first = text_train.PairSchedule(num_pairs=50, batch_size=7, seed=4)
    second = text_train.PairSchedule(num_pairs=50, batch_size=7, seed=4)
    np.testing.assert_array_equal(first.batch(9), second.batch(9))


def test_nearest_images_match_brute_force():
    features = np.random.default_rng(0).normal(size=(30, 5))
    distances = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    expected = np.argsort(distances, axis=1, kind="stable")[:, :4]
    # A chunk smaller than the row count exercises the blockwise distances.
    np.testing.assert_array_equal(text_train.nearest_images(features, 4, chunk=7), expected)


def test_nearest_images_rejects_too_many():
    with pytest.raises(ValueError, match="count=3"):
        text_train.nearest_images(np.zeros((3, 2)), 3)


def _neighbour_setup(num_images=12, captions_per_image=3, per_anchor=3, batch_size=8):
    """Images on a line, so each image's nearest neighbours are the rows next to it."""
    image_index = np.repeat(np.arange(num_images), captions_per_image)
    features = np.arange(num_images, dtype=np.float64)[:, None] ** 1.5
    pool = min(text_train.NEIGHBOUR_POOL, num_images - 1)
    nearest = text_train.nearest_images(features, pool)
    neighbours = {row: nearest[row] for row in range(num_images)}
    schedule = text_train.NeighbourSchedule(image_index, neighbours, batch_size, per_anchor,
                                            seed=5)
    return image_index, neighbours, schedule


def test_neighbour_batches_group_anchor_with_its_neighbours():
    image_index, neighbours, schedule = _neighbour_setup(per_anchor=3, batch_size=8)
    for step in range(6):
        batch = schedule.batch(step)
        assert len(batch) == 8
        for group in batch.reshape(2, 4):
            anchor_image = image_index[group[0]]
            others = image_index[group[1:]]
            assert len(set(others)) == 3  # distinct images
            assert anchor_image not in others
            assert set(others) <= set(neighbours[anchor_image])


def test_neighbour_batches_anchors_cover_every_pair():
    image_index, _, schedule = _neighbour_setup(per_anchor=1, batch_size=6)
    # Three anchors per batch: 12 steps visit the 36 pairs once as anchors.
    anchors = np.concatenate([schedule.batch(step)[::2] for step in range(12)])
    assert sorted(anchors) == list(range(len(image_index)))


def test_neighbour_batches_depend_only_on_step():
    _, _, first = _neighbour_setup()
    _, _, second = _neighbour_setup()
    second.batch(0)
    np.testing.assert_array_equal(first.batch(7), second.batch(7))
    assert not np.array_equal(first.batch(7), first.batch(8))


def test_config_rejects_unknown_setting():
    with pytest.raises(ValueError, match="bogus"):
        text_train.as_config({"workdir": "/tmp/x", "bogus": 1})


# --- End-to-end training on hand-made images ------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (40, 190, 50), "blue": (30, 90, 240),
           "yellow": (250, 225, 0), "pink": (255, 50, 170)}


def _make_records(folder, colours, per_class, class_offset):
    os.makedirs(folder, exist_ok=True)
    records = []
    for class_index, colour in enumerate(colours):
        for item in range(per_class):
            pixels = np.full((64, 64, 3), 128, np.uint8)
            start = 8 + 4 * item
            pixels[start:start + 28, start:start + 28] = COLOURS[colour]
            path = os.path.join(folder, f"{colour}_{item}.png")
            Image.fromarray(pixels).save(path)
            captions = [f"a {colour} square", f"there is a {colour} block",
                        f"A {colour.upper()} box on grey"]
            records.append(ImageRecord(f"{colour}_{item}", path, captions,
                                       class_offset + class_index))
    return records


def _config(workdir, **overrides):
    config = dict(workdir=str(workdir), dataset="folder", data_dir=None, image_size=64,
                  teacher_weights="random", embedding_dim=32, batch_size=8,
                  learning_rate=1e-3, epochs=100, max_steps=3, log_every=1,
                  checkpoint_every=2, feature_batch_size=16, precision="float32")
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_images")
    train = _make_records(str(folder / "train"), ("red", "green", "blue"), 4, 0)
    test = _make_records(str(folder / "test"), ("yellow", "pink"), 2, 10)
    return train, test


@pytest.fixture(scope="module")
def resumed_run(tiny_data, tmp_path_factory):
    """Train 3 steps, then rerun the same workdir with max_steps=6."""
    train, test = tiny_data
    workdir = tmp_path_factory.mktemp("text_run")
    first = text_train.train_text_encoder(_config(workdir, max_steps=3), train, test)
    second = text_train.train_text_encoder(_config(workdir, max_steps=6), train, test)
    return workdir, first, second


def _checkpoint_step(workdir):
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return int(tf.train.load_checkpoint(path).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_train_stops_at_max_steps(resumed_run):
    _, first, _ = resumed_run
    assert first.summary["step"] == 3


def test_resume_continues_step_counter(resumed_run):
    workdir, _, second = resumed_run
    assert second.summary["step"] == 6
    assert _checkpoint_step(workdir) == 6


def test_resume_restores_optimizer(resumed_run):
    workdir, _, _ = resumed_run
    # Adam's iteration counter continues from step 3 instead of restarting at 0.
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    iterations = [name for name in reader.get_variable_to_shape_map()
                  if name.startswith("optimizer/") and "iteration" in name]
    assert iterations, "no optimizer iteration counter in the checkpoint"
    assert int(reader.get_tensor(iterations[0])) == 6


def test_resume_equals_uninterrupted_run(resumed_run, tiny_data, tmp_path):
    _, _, second = resumed_run
    train, test = tiny_data
    straight = text_train.train_text_encoder(_config(tmp_path, max_steps=6), train, test)
    captions = ["a red square", "a pink box", "something else entirely"]
    np.testing.assert_allclose(second.text_encoder.embed(captions),
                               straight.text_encoder.embed(captions), rtol=1e-4, atol=1e-5)


def test_rerun_of_finished_run_keeps_figures(resumed_run, tiny_data):
    workdir, _, second = resumed_run
    train, test = tiny_data
    again = text_train.train_text_encoder(_config(workdir, max_steps=6), train, test)
    assert again.summary["step"] == 6
    assert "train_loss" in second.summary
    assert again.summary["train_loss"] == second.summary["train_loss"]
    stored = json.loads((workdir / text_train.EVAL_FILE).read_text())
    assert stored["train_loss"] == second.summary["train_loss"]


def test_load_gives_trained_embeddings(resumed_run):
    workdir, _, second = resumed_run
    loaded = enc.load_text_encoder(str(workdir))
    captions = ["a red square", "A GREEN block", "caf\u00e9 \U0001F426", ""]
    np.testing.assert_allclose(loaded.embed(captions), second.text_encoder.embed(captions),
                               rtol=1e-5, atol=1e-6)


def test_load_image_projection_matches(resumed_run):
    workdir, _, second = resumed_run
    loaded = text_train.load_image_projection(str(workdir))
    features = np.random.default_rng(0).normal(size=(2, text_train.IMAGE_FEATURE_DIM))
    np.testing.assert_allclose(loaded(features).numpy(), second.image_projection(features).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_config_json_records_encoding(resumed_run):
    workdir, _, _ = resumed_run
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as file:
        config = json.load(file)
    assert config["kind"] == "text_encoder"
    assert config["alphabet"] == enc.ALPHABET
    assert config["max_length"] == 201
    assert config["embedding_dim"] == 32
    assert config["rnn"] == "gru"
    assert config["image_size"] == 64
    assert config["teacher_weights"] == "random"


def test_eval_file_written(resumed_run):
    workdir, _, second = resumed_run
    with open(os.path.join(workdir, "text_eval.json"), encoding="utf-8") as file:
        result = json.load(file)
    assert result["num_classes"] == 2
    assert result["num_images"] == 4
    assert 0.0 <= result["zero_shot_accuracy"] <= 1.0
    assert result == second.summary


def test_tensorboard_events_written(resumed_run):
    workdir, _, _ = resumed_run
    names = os.listdir(os.path.join(workdir, "train"))
    assert any(name.startswith("events.out.tfevents") for name in names)


def _logged_learning_rates(workdir) -> dict:
    """Return {step: learning rate} from the run's TensorBoard events."""
    rates = {}
    folder = os.path.join(workdir, "train")
    for name in os.listdir(folder):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                if value.tag == "learning_rate":
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    return rates


@pytest.mark.parametrize("decay", ["none", "cosine"])
def test_learning_rate_decay_per_step(tiny_data, tmp_path, decay):
    text_train.train_text_encoder(
        _config(tmp_path, max_steps=4, learning_rate_decay=decay), tiny_data[0])
    rates = _logged_learning_rates(tmp_path)
    assert sorted(rates) == [1, 2, 3, 4]
    for step, rate in rates.items():
        # After `step` updates, a half cosine from 1e-3 to 0 over 4 steps.
        expected = 1e-3 * (0.5 * (1 + math.cos(math.pi * step / 4)) if decay == "cosine" else 1)
        assert rate == pytest.approx(expected, abs=1e-9)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["learning_rate_decay"] == decay


def test_interrupted_cosine_neighbour_run_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    """A run stopped after its step-2 checkpoint and rerun ends as an uninterrupted one."""
    train, test = tiny_data
    settings = dict(max_steps=4, learning_rate_decay="cosine", negatives="instance",
                    batch_neighbours=1)
    straight = text_train.train_text_encoder(_config(tmp_path / "straight", **settings), train)

    real_log_window = text_train._log_window

    def interrupt_at_step_3(window, current, *args):
        if current == 3:
            raise KeyboardInterrupt
        return real_log_window(window, current, *args)

    monkeypatch.setattr(text_train, "_log_window", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        text_train.train_text_encoder(_config(tmp_path / "resumed", **settings), train)
    monkeypatch.setattr(text_train, "_log_window", real_log_window)
    resumed = text_train.train_text_encoder(_config(tmp_path / "resumed", **settings), train)

    captions = ["a red square", "a pink box", "something else entirely"]
    np.testing.assert_allclose(resumed.text_encoder.embed(captions),
                               straight.text_encoder.embed(captions), rtol=1e-4, atol=1e-5)
    assert _logged_learning_rates(tmp_path / "resumed")[4] == 0.0


def test_resume_with_other_rnn_raises(resumed_run, tiny_data):
    workdir, _, _ = resumed_run
    with pytest.raises(WorkdirError, match=r"rnn='gru'.*rnn='rnn'"):
        text_train.train_text_encoder(_config(workdir, max_steps=7, rnn="rnn"), tiny_data[0])


def test_resume_with_other_dim_raises(resumed_run, tiny_data):
    workdir, _, _ = resumed_run
    with pytest.raises(WorkdirError, match=r"embedding_dim=32.*embedding_dim=64"):
        text_train.train_text_encoder(_config(workdir, max_steps=7, embedding_dim=64),
                                      tiny_data[0])


def test_load_unfinished_run_raises(tmp_path):
    config = text_train.workdir_config(text_train.as_config(_config(tmp_path)))
    open_workdir(str(tmp_path), "text_encoder", config, ())
    with pytest.raises(WorkdirError, match="did not finish"):
        enc.load_text_encoder(str(tmp_path))


def test_load_wrong_kind_raises(tmp_path):
    open_workdir(str(tmp_path), "sdn", {"image_size": 64}, ())
    with pytest.raises(WorkdirError, match=str(tmp_path)):
        enc.load_text_encoder(str(tmp_path))


def test_train_without_dropout(tiny_data, tmp_path):
    result = text_train.train_text_encoder(_config(tmp_path, max_steps=1, dropout=0.0),
                                           tiny_data[0])
    assert result.summary["step"] == 1


def test_grid_features_keep_layout():
    """Spatial means cannot tell a left square from a right one; a 2x2 grid can."""
    teacher = build_teacher(64, "random")
    left = np.full((1, 64, 64, 3), 128, np.uint8)
    right = left.copy()
    left[0, 16:48, 0:32] = (220, 30, 30)
    right[0, 16:48, 32:64] = (220, 30, 30)
    images = np.concatenate([left, right])
    means = text_train.compute_image_features(images, teacher, "released_code", grid=1)
    grid = text_train.compute_image_features(images, teacher, "released_code", grid=2)
    assert means.shape == (2, text_train.IMAGE_FEATURE_DIM)
    assert grid.shape == (2, 4 * text_train.IMAGE_FEATURE_DIM)
    # Mirrored images differ in their means only through border effects of the
    # convolutions' zero padding, and far more in their grid cells.
    # pool1 (the first 64 channels) is barely affected by the padding.
    mean_change = np.abs(means[0, :64] - means[1, :64]).mean()
    grid_change = np.abs(grid[0, :4 * 64] - grid[1, :4 * 64]).mean()
    assert grid_change > 5 * mean_change
    # Each grid tap averages to the tap's spatial mean (area pooling of 2x2 cells).
    pool5_means = means[0, -512:]
    pool5_cells = grid[0, -4 * 512:].reshape(2, 2, 512).mean(axis=(0, 1))
    np.testing.assert_allclose(pool5_cells, pool5_means, rtol=1e-4, atol=1e-3)


def test_train_with_grid_and_instance_negatives(tiny_data, tmp_path):
    train, test = tiny_data
    result = text_train.train_text_encoder(
        _config(tmp_path, max_steps=2, feature_grid=2, negatives="instance"), train, test)
    assert result.summary["step"] == 2
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["feature_grid"] == 2
    assert config["negatives"] == "instance"
    assert config["image_feature_dim"] == 4 * text_train.IMAGE_FEATURE_DIM
    assert "2x2 grid" in config["image_features"]
    projection = text_train.load_image_projection(str(tmp_path))
    assert projection.input_shape == (None, 4 * text_train.IMAGE_FEATURE_DIM)
    # Resuming with other features would pair the projection with wrong inputs.
    with pytest.raises(WorkdirError, match="image_features"):
        text_train.train_text_encoder(
            _config(tmp_path, max_steps=3, feature_grid=1, negatives="instance"), train, test)


def _record_groups(monkeypatch) -> list:
    """Wrap the text training step so each call's `groups` argument is appended to a list."""
    seen = []
    real_factory = text_train._make_train_step

    def factory(*args, **kwargs):
        real_step = real_factory(*args, **kwargs)

        def step(onehot, features, groups):
            seen.append(groups.numpy())
            return real_step(onehot, features, groups)

        return step

    monkeypatch.setattr(text_train, "_make_train_step", factory)
    return seen


def test_instance_negatives_use_image_ids(tiny_data, tmp_path, monkeypatch):
    """With negatives="instance", two images of one class are each other's negatives."""
    seen = _record_groups(monkeypatch)
    train, _ = tiny_data
    text_train.train_text_encoder(_config(tmp_path, max_steps=1, negatives="instance"), train)
    # Image rows run from 0 to 11 (three classes of four images): more distinct
    # ids than classes proves these are image ids.
    assert len(np.unique(seen[0])) > 3
    assert seen[0].max() < len(train)


def test_class_instance_negatives_groupings(tiny_data, tmp_path, monkeypatch):
    """negatives="class+instance" gives the step one column of class ids and one of image ids."""
    seen = _record_groups(monkeypatch)
    train, _ = tiny_data
    result = text_train.train_text_encoder(
        _config(tmp_path, max_steps=2, negatives="class+instance"), train)
    assert result.summary["step"] == 2
    groups = seen[0]
    assert groups.shape[1] == 2
    class_of_image = {index: record.class_id for index, record in enumerate(train)}
    # Column 0 contains class ids, column 1 the image row of each caption.
    assert [class_of_image[int(i)] for i in groups[:, 1]] == list(groups[:, 0])
    assert len(np.unique(groups[:, 1])) > len(np.unique(groups[:, 0]))


def test_summed_negatives_loss():
    """The two-column step loss equals the class term plus the instance term."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(6, 4)), tf.float32)
    texts = tf.constant(rng.normal(size=(6, 4)), tf.float32)
    classes = tf.constant([0, 0, 1, 1, 2, 2])
    instances = tf.range(6)
    class_term, _ = enc.ds_sje_loss(images, texts, classes)
    instance_term, _ = enc.ds_sje_loss(images, texts, instances)
    assert float(instance_term) != pytest.approx(float(class_term))
    # The step sums one term per column of `groups`; rebuild it with a linear
    # projection and an identity "text model" to read the loss back.
    text_model = keras.Sequential([keras.Input((4,)), keras.layers.Identity()])
    projection = keras.Sequential([keras.Input((4,)), keras.layers.Identity()])
    optimizer = keras.optimizers.SGD(0.0)
    step = text_train._make_train_step(text_model, projection, optimizer, 1.0, False)
    loss, _ = step(texts, images, tf.stack([classes, instances], axis=1))
    assert float(loss) == pytest.approx(float(class_term) + float(instance_term), rel=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"negatives": "pairs"}, "negatives='pairs'"),
    ({"feature_grid": 0}, "feature_grid=0"),
    ({"feature_grid": 8}, "feature_grid=8"),
    ({"batch_neighbours": -1}, "batch_neighbours=-1"),
    ({"batch_neighbours": 9}, "batch_neighbours=9 must be from 0 to 8"),
    ({"neighbour_space": "lab"}, "neighbour_space='lab'; use one of greyscale, rgb"),
    ({"learning_rate_decay": "linear"}, "learning_rate_decay='linear'; use one of none, "
     "cosine"),
    ({"batch_neighbours": 2, "batch_size": 8}, "batch_size=8 must be a multiple of "
     "batch_neighbours \\+ 1 = 3.*--batch_size=9"),
])
def test_config_rejects_bad_feature_settings(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        text_train.as_config(_config(tmp_path, **overrides))


def _nan_at_call(monkeypatch, bad_call):
    """Make the training step report a NaN loss on its `bad_call`-th call (1-based)."""
    real_factory = text_train._make_train_step
    calls = {"count": 0}

    def factory(*args, **kwargs):
        real_step = real_factory(*args, **kwargs)

        def step(*step_args):
            calls["count"] += 1
            loss, accuracy = real_step(*step_args)
            if calls["count"] == bad_call:
                return tf.constant(float("nan")), accuracy
            return loss, accuracy

        return step

    monkeypatch.setattr(text_train, "_make_train_step", factory)


def test_nan_loss_stops_with_step(tiny_data, tmp_path, monkeypatch):
    _nan_at_call(monkeypatch, 3)
    with pytest.raises(FloatingPointError, match="nan at step 3"):
        text_train.train_text_encoder(_config(tmp_path, max_steps=5), tiny_data[0])


def test_nan_loss_restore_finishes(tiny_data, tmp_path, monkeypatch):
    _nan_at_call(monkeypatch, 3)
    config = _config(tmp_path, max_steps=5, on_nan="restore", checkpoint_every=2)
    result = text_train.train_text_encoder(config, tiny_data[0])
    assert result.summary["step"] == 5
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")))
    # Step 3 failed after the step-2 checkpoint, so the data skipped one batch.
    assert int(reader.get_tensor("data_offset/.ATTRIBUTES/VARIABLE_VALUE")) == 1


@pytest.mark.parametrize("fuse_update", [False, True])
def test_nan_step_leaves_weights_unchanged(fuse_update):
    text_model = enc.build_text_encoder(embedding_dim=8)
    projection = text_train.build_image_projection(8)
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(text_model.trainable_variables + projection.trainable_variables)
    step = text_train._make_train_step(text_model, projection, optimizer, 1.0, jit=False,
                                       fuse_update=fuse_update)
    before = [variable.numpy().copy() for variable in projection.trainable_variables]
    features = np.full((2, text_train.IMAGE_FEATURE_DIM), np.nan, np.float32)
    loss, _ = step(enc.captions_to_onehot(["a red box", "a blue box"]), features,
                   tf.constant([0, 1]))
    assert not np.isfinite(float(loss))
    assert int(optimizer.iterations.numpy()) == 0
    for old, variable in zip(before, projection.trainable_variables):
        np.testing.assert_array_equal(old, variable.numpy())


def test_fused_update_matches_plain():
    """Five steps with the XLA-compiled Adam update follow the plain update's weights."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(4, text_train.IMAGE_FEATURE_DIM)).astype(np.float32)
    onehot = enc.captions_to_onehot(["a red box", "a blue box", "a tiny green disc",
                                     "a large pink star"])
    groups = tf.constant([0, 1, 2, 3])
    results = {}
    for fuse_update in (False, True):
        text_model = enc.build_text_encoder(embedding_dim=8, dropout=0.0)
        projection = text_train.build_image_projection(8)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(text_model.trainable_variables + projection.trainable_variables)
        step = text_train._make_train_step(text_model, projection, optimizer, 1.0, jit=False,
                                           fuse_update=fuse_update)
        losses = [float(step(onehot, features, groups)[0]) for _ in range(5)]
        weights = [variable.numpy() for variable in
                   text_model.trainable_variables + projection.trainable_variables]
        results[fuse_update] = {"losses": losses, "weights": weights,
                                "iterations": int(optimizer.iterations.numpy())}
    plain, fused = results[False], results[True]
    assert plain["iterations"] == 5
    assert fused["iterations"] == 5
    np.testing.assert_allclose(fused["losses"], plain["losses"], rtol=1e-4)
    assert plain["losses"][-1] < plain["losses"][0]
    for fused_weight, plain_weight in zip(fused["weights"], plain["weights"]):
        np.testing.assert_allclose(fused_weight, plain_weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused_update", [False, True])
def test_fused_update_flag_reaches_step(tiny_data, tmp_path, monkeypatch, fused_update):
    """--fused_update picks the XLA update on the CPU; the default keeps the plain one."""
    chosen = []
    build_step = text_train._make_train_step

    def recording_build_step(*args, **kwargs):
        chosen.append(kwargs["fuse_update"])
        return build_step(*args, **kwargs)

    monkeypatch.setattr(text_train, "_make_train_step", recording_build_step)
    result = text_train.train_text_encoder(
        _config(tmp_path, max_steps=2, fused_update=fused_update), tiny_data[0])
    assert chosen == [fused_update]
    assert result.summary["step"] == 2
    assert np.isfinite(result.summary["train_loss"])


@pytest.mark.parametrize("space, cache_name", [("greyscale", "train_greyscale"),
                                               ("rgb", "train")])
def test_train_with_neighbour_batches(tiny_data, tmp_path, monkeypatch, space, cache_name):
    """Each group of a batch pairs an anchor with captions of the nearest other images."""
    seen = _record_groups(monkeypatch)
    train, _ = tiny_data
    result = text_train.train_text_encoder(
        _config(tmp_path, max_steps=2, negatives="instance", batch_neighbours=3,
                neighbour_space=space), train)
    assert result.summary["step"] == 2
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["batch_neighbours"], config["neighbour_space"]) == (3, space)
    cached = sorted(os.listdir(tmp_path / "image_features"))
    assert cached == sorted({"train.npz", cache_name + ".npz"})
    # Rebuild each image's pool of candidates from the run's cached features.
    with np.load(tmp_path / "image_features" / (cache_name + ".npz")) as cache:
        features = cache["features"]
    mean, std = text_train.feature_statistics(features)
    pool = text_train.nearest_images((features - mean) / std, text_train.NEIGHBOUR_POOL)
    assert len(seen) == 2
    for groups in seen:
        for group in groups.reshape(-1, 4):
            assert len(set(group)) == 4
            assert set(group[1:]) <= set(pool[group[0]])


def test_greyscale_features_ignore_hue(tiny_data, tmp_path):
    """The greyscale cache contains the teacher's features of luma-only copies of the images."""
    from sdn_tf import teacher as teacher_lib
    from sdn_tf.data.pipeline import load_images

    train, _ = tiny_data
    text_train.train_text_encoder(
        _config(tmp_path, max_steps=1, negatives="instance", batch_neighbours=1), train)
    # The run seeds Keras with --seed before it builds the random teacher.
    keras.utils.set_random_seed(0)
    teacher = teacher_lib.build_teacher(64, "random", "released_code")
    greyscale = text_train.to_greyscale(load_images(train, 64))
    expected = text_train.compute_image_features(greyscale, teacher, "released_code")
    with np.load(tmp_path / "image_features" / "train_greyscale.npz") as cache:
        np.testing.assert_allclose(cache["features"], expected, rtol=1e-5, atol=1e-5)
    with np.load(tmp_path / "image_features" / "train.npz") as cache:
        assert not np.allclose(cache["features"], expected)
    # A red and a green square of equal luma look the same in greyscale.
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 200
    green = np.zeros((1, 4, 4, 3), np.uint8)
    green[..., 1] = round(200 * 0.299 / 0.587)
    np.testing.assert_array_equal(text_train.to_greyscale(red), text_train.to_greyscale(green))
    np.testing.assert_array_equal(text_train.to_greyscale(red)[0, 0, 0], [60, 60, 60])


def test_neighbour_batches_need_enough_images(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="batch_neighbours=3 needs at least 4 training images"):
        text_train.train_text_encoder(
            _config(tmp_path, batch_size=4, negatives="instance", batch_neighbours=3),
            tiny_data[0][:3])


def test_too_few_pairs_raises(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="batch_size=100"):
        text_train.train_text_encoder(_config(tmp_path, batch_size=100), tiny_data[0])


# --- Command line -------------------------------------------------------------------


def _run_cli(*args):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "sdn_tf.cli.train_text", *args],
                          cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                          timeout=120)


def test_cli_helpfull_lists_flags():
    result = _run_cli("--helpfull")
    assert "Traceback" not in result.stderr
    for flag in ("--rnn", "--embedding_dim", "--dropout", "--teacher_weights", "--workdir",
                 "--[no]fused_update", "--batch_neighbours", "--neighbour_space", "--learning_rate_decay"):
        assert flag in result.stdout


def test_cli_bad_rnn_names_value(tmp_path):
    result = _run_cli(f"--workdir={tmp_path}", "--rnn=lstm")
    assert result.returncode != 0
    assert "lstm" in result.stderr
    assert "gru" in result.stderr
