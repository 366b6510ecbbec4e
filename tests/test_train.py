"""sdn-train end to end on a tiny hand-made dataset: stages, resume, init_from, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sdn_tf import workdir as workdir_lib
from sdn_tf.data.records import ImageRecord
from sdn_tf.train import GENERATOR_WEIGHTS, SDNConfig, train


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    result = []
    for index in range(6):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
        result.append(ImageRecord(
            name=f"image{index}", image_path=str(path), captions=["first", "second"],
            class_id=index % 2, embeddings=rng.normal(size=(2, 16)).astype(np.float32)))
    return result


def config(workdir, **overrides):
    settings = dict(workdir=str(workdir), text_embeddings="pickle", teacher_weights="random",
                    batch_size=4, epochs=10, max_steps=4, log_every=2, checkpoint_every=2,
                    sample_every=2, precision="float32")
    settings.update(overrides)
    return SDNConfig(**settings)


def read_log(workdir):
    with open(os.path.join(workdir, "train_log.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_stage1_writes_workdir(tmp_path, records):
    losses = train(config(tmp_path / "run"), records, records[:2])
    run = tmp_path / "run"
    assert (run / GENERATOR_WEIGHTS).is_file()
    assert (run / "config.json").is_file()
    assert list((run / "train").iterdir()), "no TensorBoard events written"
    stored = json.loads((run / "config.json").read_text())
    assert stored["kind"] == "sdn"
    assert stored["stage"] == 1
    assert stored["embedding_dim"] == 16
    assert np.isfinite(losses["loss"])
    assert "stage1/conv1_1" in losses
    assert "stage2_taps" not in losses
    assert json.loads((run / "final.json").read_text())["step"] == 4


def test_loss_decreases(tmp_path, records):
    train(config(tmp_path / "run", max_steps=12, log_every=4, learning_rate=1e-3),
          records, records[:2])
    log = read_log(tmp_path / "run")
    assert log[-1]["loss"] < log[0]["loss"]


def test_resume_continues_step_and_losses(tmp_path, records):
    # An interrupted run resumed with a larger step limit must continue the
    # step counter and reproduce the uninterrupted run's losses.
    train(config(tmp_path / "whole", max_steps=6), records, records[:2])
    train(config(tmp_path / "split", max_steps=4), records, records[:2])
    train(config(tmp_path / "split", max_steps=6), records, records[:2])
    whole = read_log(tmp_path / "whole")
    split = read_log(tmp_path / "split")
    assert [entry["step"] for entry in split] == [2, 4, 6]
    np.testing.assert_allclose(split[-1]["loss"], whole[-1]["loss"], rtol=1e-4)


def test_background_checkpoints_match_training_thread(tmp_path, records, monkeypatch):
    """A checkpoint written while training goes on contains the weights of its own step."""
    import tensorflow as tf

    written_in_background = []
    write = workdir_lib.CheckpointWriter._write

    def recording_write(self, step):
        written_in_background.append(step)
        write(self, step)

    monkeypatch.setattr(workdir_lib.CheckpointWriter, "_write", recording_write)
    # precision="auto" takes the fused XLA update of mixed_bfloat16 where the CPU has bf16.
    train(config(tmp_path / "background", precision="auto", background_checkpoints="true"),
          records, records[:2])
    assert written_in_background == [0, 2, 4]
    train(config(tmp_path / "foreground", precision="auto", background_checkpoints="false"),
          records, records[:2])
    for number in (2, 4):
        background = tf.train.load_checkpoint(
            str(tmp_path / "background" / "checkpoints" / f"ckpt-{number}"))
        foreground = tf.train.load_checkpoint(
            str(tmp_path / "foreground" / "checkpoints" / f"ckpt-{number}"))
        names = sorted(background.get_variable_to_shape_map())
        assert names == sorted(foreground.get_variable_to_shape_map())
        assert len(names) > 20, names  # the generator's weights and Adam's slots
        for name in names:
            if name.endswith("CHECKPOINTABLE_OBJECT_GRAPH"):
                continue
            np.testing.assert_allclose(background.get_tensor(name), foreground.get_tensor(name),
                                       rtol=1e-5, atol=1e-7, err_msg=f"ckpt-{number} {name}")


def test_rerun_of_finished_run_keeps_losses(tmp_path, records, monkeypatch):
    from sdn_tf import train as train_lib

    first = train(config(tmp_path / "run"), records, records[:2])

    def no_embedding(*args, **kwargs):
        raise AssertionError("a finished run embedded its captions again")

    with monkeypatch.context() as patch:
        patch.setattr(train_lib, "embed_records", no_embedding)
        again = train(config(tmp_path / "run"), records, records[:2])
    assert first["loss"] > 0
    assert again == first
    # Without its final weights the run restores step 4, trains no step and
    # writes them again, keeping the recorded losses.
    os.remove(tmp_path / "run" / GENERATOR_WEIGHTS)
    train(config(tmp_path / "run"), records, records[:2])
    assert (tmp_path / "run" / GENERATOR_WEIGHTS).is_file()
    stored = json.loads((tmp_path / "run" / "final.json").read_text())
    assert stored["step"] == 4
    assert stored["losses"] == first


def test_stage2_from_stage1(tmp_path, records):
    train(config(tmp_path / "stage1"), records, records[:2])
    losses = train(config(tmp_path / "stage2", stage=2, init_from=str(tmp_path / "stage1")),
                   records, records[:2])
    assert "stage2/pool5" in losses
    assert "stage1_taps" not in losses


def test_image_gain_and_init_from(tmp_path, records):
    """Stage-II must build its generator with the Stage-I run's image gain."""
    train(config(tmp_path / "stage1", generator_init="he", image_gain=64.0,
                 init_image_bias=True, max_steps=2), records, records[:2])
    stored = json.loads((tmp_path / "stage1" / "config.json").read_text())
    assert stored["image_gain"] == 64.0
    assert stored["generator_init"] == "he"
    with pytest.raises(workdir_lib.WorkdirError, match=r"image_gain=64.0.*--image_gain=64.0"):
        train(config(tmp_path / "stage2", stage=2, init_from=str(tmp_path / "stage1")),
              records, records[:2])
    losses = train(config(tmp_path / "stage2b", stage=2, image_gain=64.0, max_steps=2,
                          init_from=str(tmp_path / "stage1")), records, records[:2])
    assert np.isfinite(losses["loss"])


# Stage-II uses the cached real taps as Stage-I does and runs the teacher on
# the generated images as well, so the default run checks Stage-II only: each
# train() call leaves about 0.7 GB of process memory behind.
@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_cached_taps_give_same_losses(tmp_path, records, stage):
    """Training on cached teacher taps logs the losses of training with teacher passes."""
    settings = dict(stage=stage, max_steps=4, learning_rate=1e-3)
    train(config(tmp_path / "teacher", **settings), records, records[:2])
    train(config(tmp_path / "cached", cache_teacher_taps=True, **settings), records, records[:2])
    expected = read_log(tmp_path / "teacher")
    logged = read_log(tmp_path / "cached")
    assert [entry["step"] for entry in logged] == [2, 4]
    for name in ("loss", "image", f"stage{stage}_taps"):
        np.testing.assert_allclose([entry[name] for entry in logged],
                                   [entry[name] for entry in expected], rtol=1e-4)


def test_tap_cache_gathers_teacher_taps():
    from sdn_tf.model import TeacherTapCache
    from sdn_tf.teacher import build_teacher, rgb_to_teacher_space

    teacher = build_teacher(64, "random")
    images = np.random.default_rng(1).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    cache = TeacherTapCache(teacher, images, "released_code", batch_size=2)
    gathered = cache.gather(tf.constant([4, 0]))
    expected = teacher(rgb_to_teacher_space(tf.constant(images[[4, 0]], tf.float32),
                                            "released_code"))
    assert set(gathered) == set(expected)
    for tap, values in gathered.items():
        np.testing.assert_allclose(values.numpy(), expected[tap].numpy(), rtol=1e-4, atol=1e-3)


def test_tap_cache_refuses_too_little_memory():
    from sdn_tf.model import TeacherTapCache
    from sdn_tf.teacher import build_teacher

    images = np.zeros((10, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"needs 0\.0 GiB .* of 10 images at 64x64 .*"
                                         r"train without --cache_teacher_taps"):
        TeacherTapCache(build_teacher(64, "random"), images, "released_code",
                        memory_bytes=2**20)


def test_tap_cache_refuses_mirrored(tmp_path, records):
    with pytest.raises(ValueError, match="--cache_teacher_taps works only with "
                                         "--strategy=default, not --strategy=mirrored"):
        train(config(tmp_path / "run", cache_teacher_taps=True, strategy="mirrored"),
              records, records[:2])


def test_pair_batches_carry_image_index():
    from sdn_tf.data import pipeline

    images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    pair_image_index = np.array([0, 0, 1, 2, 3, 3])
    embeddings = np.arange(6, dtype=np.float32)[:, None]
    batch_images, batch_embeddings, image_index = next(iter(pipeline.pair_dataset(
        images, embeddings, pair_image_index, batch_size=6, seed=0, with_image_index=True)))
    np.testing.assert_array_equal(batch_images.numpy()[:, 0, 0, 0], image_index.numpy())
    pairs = batch_embeddings.numpy()[:, 0].astype(int)
    np.testing.assert_array_equal(pair_image_index[pairs], image_index.numpy())


def _train_tiny_text_encoder(tmp_path, records) -> str:
    """Train a 16-dimensional text encoder for one step and return its workdir."""
    from sdn_tf.text.train import train_text_encoder

    text_dir = str(tmp_path / "text")
    train_text_encoder(dict(workdir=text_dir, dataset="folder", image_size=64,
                            teacher_weights="random", embedding_dim=16, batch_size=4,
                            max_steps=1, feature_batch_size=8, precision="float32"), records)
    return text_dir


def _start_with_embedding_option(tmp_path, records, text_dir, option):
    """Write a zero-step Stage-I run with `option` on; return its stored config and generator."""
    from sdn_tf.export import _load_trained

    train(config(tmp_path / "run", text_embeddings="encoder", text_encoder=text_dir,
                 generator_init="he", image_gain=64.0, epochs=0, max_steps=0,
                 **{option: True}), records, records[:2])
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    _, _, generator = _load_trained(str(tmp_path / "run"))
    return stored, generator


def _stage2_config(workdir, text_dir, init_from, **overrides):
    return config(workdir, stage=2, text_embeddings="encoder", text_encoder=text_dir,
                  image_gain=64.0, max_steps=1, init_from=str(init_from), **overrides)


def test_normalised_embeddings_reach_export(tmp_path, records):
    """The embedding statistics are set from training captions and exported with G."""
    from sdn_tf.generator import EMBEDDING_NORM_LAYER

    text_dir = _train_tiny_text_encoder(tmp_path, records)
    stored, generator = _start_with_embedding_option(tmp_path, records, text_dir,
                                                     "normalise_embeddings")
    assert stored["normalise_embeddings"] is True
    layer = generator.get_layer(EMBEDDING_NORM_LAYER)
    assert np.any(layer.mean.numpy() != 0.0)
    assert np.all(layer.std.numpy() != 1.0)
    assert generator.get_layer("g_img_gain").scale == 64.0
    with pytest.raises(workdir_lib.WorkdirError, match="normalise_embeddings"):
        train(_stage2_config(tmp_path / "stage2", text_dir, tmp_path / "run"),
              records, records[:2])


def test_whitened_embeddings_reach_export(tmp_path, records):
    """The whitening is set from training captions, exported, and Stage-II must repeat it."""
    from sdn_tf.generator import EMBEDDING_WHITEN_LAYER

    text_dir = _train_tiny_text_encoder(tmp_path, records)
    stored, generator = _start_with_embedding_option(tmp_path, records, text_dir,
                                                     "whiten_embeddings")
    assert stored["whiten_embeddings"] is True
    matrix = generator.get_layer(EMBEDDING_WHITEN_LAYER).matrix.numpy()
    assert not np.allclose(matrix, np.eye(16))
    with pytest.raises(workdir_lib.WorkdirError, match="whiten_embeddings"):
        train(_stage2_config(tmp_path / "stage2", text_dir, tmp_path / "run"),
              records, records[:2])
    losses = train(_stage2_config(tmp_path / "stage2b", text_dir, tmp_path / "run",
                                  whiten_embeddings=True), records, records[:2])
    assert np.isfinite(losses["loss"])


def test_resume_config_without_whitening(tmp_path, records):
    """A stored config without whiten_embeddings resumes as whiten_embeddings=False."""
    train(config(tmp_path / "run", max_steps=1, checkpoint_every=1), records, records[:2])
    path = tmp_path / "run" / "config.json"
    stored = json.loads(path.read_text())
    del stored["whiten_embeddings"]
    path.write_text(json.dumps(stored))
    losses = train(config(tmp_path / "run", max_steps=2, checkpoint_every=1), records,
                   records[:2])
    assert np.isfinite(losses["loss"])
    assert json.loads((tmp_path / "run" / "final.json").read_text())["step"] == 2
    with pytest.raises(workdir_lib.WorkdirError, match="whiten_embeddings=False"):
        train(config(tmp_path / "run", max_steps=3, whiten_embeddings=True), records,
              records[:2])


def test_init_from_unfinished_run(tmp_path, records):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(workdir_lib.WorkdirError, match="config.json.*Point --init_from at"):
        train(config(tmp_path / "stage2", stage=2, init_from=str(tmp_path / "empty")),
              records, records[:2])


def test_wrong_kind_init_from_names_flag(tmp_path, records):
    os.makedirs(tmp_path / "text")
    workdir_lib.write_json_atomically(str(tmp_path / "text" / "config.json"),
                                      {"kind": "text_encoder"})
    with pytest.raises(workdir_lib.WorkdirError,
                       match=r"--init_from=.*'text_encoder' run.*an? sdn-train run"):
        train(config(tmp_path / "stage2", stage=2, init_from=str(tmp_path / "text")),
              records, records[:2])


def test_missing_text_encoder_names_flag(tmp_path, records):
    with pytest.raises(workdir_lib.WorkdirError, match="Point --text_encoder at"):
        train(config(tmp_path / "run", text_embeddings="encoder",
                     text_encoder=str(tmp_path / "nope")), records, records[:2])


def test_resume_with_other_stage_rejected(tmp_path, records):
    train(config(tmp_path / "run", max_steps=2), records, records[:2])
    with pytest.raises(workdir_lib.WorkdirError, match="stage=1.*stage=2"):
        train(config(tmp_path / "run", stage=2), records, records[:2])


def test_resume_with_other_image_size_rejected(tmp_path, records):
    train(config(tmp_path / "run", max_steps=2), records, records[:2])
    with pytest.raises(workdir_lib.WorkdirError, match="image_size=64.*image_size=96"):
        train(config(tmp_path / "run", image_size=96), records, records[:2])


def test_unwritable_workdir(tmp_path, records):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(workdir_lib.WorkdirError, match="not writable"):
        train(config(blocker / "run"), records, records[:2])


def test_batch_larger_than_data(tmp_path, records):
    with pytest.raises(ValueError, match="--batch_size=64"):
        train(config(tmp_path / "run", batch_size=64), records, records[:2])


def test_missing_text_encoder(tmp_path, records):
    with pytest.raises(ValueError, match="--text_encoder"):
        train(config(tmp_path / "run", text_embeddings="encoder"), records, records[:2])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sdn_tf.cli.train", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag, expected", [
    ("--image_size=100", "multiple of 32"),
    ("--stage=3", "--stage"),
    ("--teacher_preset=caffe", "teacher_preset"),
    ("--tap_weights=conv9_9=1", "conv9_9"),
])
def test_cli_rejects_bad_flags(tmp_path, flag, expected):
    result = run_cli(f"--workdir={tmp_path}", flag)
    assert result.returncode != 0
    assert expected in result.stderr


def test_cli_requires_workdir():
    result = run_cli()
    assert result.returncode != 0
    assert "--workdir" in result.stderr


def test_cli_helpfull_lists_flags():
    result = run_cli("--helpfull")
    assert "--teacher_weights" in result.stdout
    assert "--init_from" in result.stdout


@pytest.fixture
def nan_on_black_image(monkeypatch, tmp_path, records):
    """Make the loss NaN in pool5 for any batch holding an all-black image.

    A NaN in the data does not reliably reach the loss, because ReLU turns
    NaN into 0 on the CPU, so the fault is injected into the loss itself.
    """
    import tensorflow as tf

    from sdn_tf import model as model_lib

    real_loss = model_lib.sdn_loss

    def faulty_loss(real_image, *args, **kwargs):
        losses = real_loss(real_image, *args, **kwargs)
        black = tf.reduce_any(tf.reduce_max(real_image, axis=[1, 2, 3]) == 0.0)
        for name in ("loss", "stage1/pool5"):
            losses[name] = tf.where(black, tf.constant(np.nan, tf.float32), losses[name])
        return losses

    monkeypatch.setattr(model_lib, "sdn_loss", faulty_loss)
    path = tmp_path / "black.png"
    Image.fromarray(np.zeros((40, 52, 3), np.uint8)).save(path)
    return [records[0], ImageRecord(**{**records[1].__dict__, "image_path": str(path)}),
            *records[2:]]


def test_nan_stops_with_step_and_tap(tmp_path, records, nan_on_black_image):
    with pytest.raises(FloatingPointError, match=r"step \d+ .*stage1/pool5"):
        train(config(tmp_path / "run", max_steps=6), nan_on_black_image, records[:2])
    assert not (tmp_path / "run" / GENERATOR_WEIGHTS).exists()


def test_nan_restore_gives_up(tmp_path, records, nan_on_black_image):
    # Every epoch contains the black image, so restoring cannot get past it
    # for long; the run must stop after --max_nan_restores tries.
    with pytest.raises(FloatingPointError, match="Gave up after 2 restores"):
        train(config(tmp_path / "run", max_steps=40, on_nan="restore", max_nan_restores=2,
                     checkpoint_every=1),
              nan_on_black_image, records[:2])
