"""sdn-train when things go wrong: kills, damaged checkpoints, mismatched resumes, full disks."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sdn_tf import workdir as workdir_lib
from sdn_tf.data.records import ImageRecord
from sdn_tf.text.train import train_text_encoder
from sdn_tf.train import GENERATOR_WEIGHTS, SDNConfig, train

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    result = []
    for index in range(6):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
        result.append(ImageRecord(
            name=f"image{index}", image_path=str(path), captions=["a red bird", "a blue box"],
            class_id=index % 2, embeddings=rng.normal(size=(2, 16)).astype(np.float32)))
    return result


def config(workdir, **overrides):
    # epochs=0 finishes after the step-0 checkpoint, skipping the costly
    # compilation of the training step; the checks here happen before it.
    settings = dict(workdir=str(workdir), text_embeddings="pickle", teacher_weights="random",
                    batch_size=4, epochs=0, max_steps=0, sample_every=100, precision="float32")
    settings.update(overrides)
    return SDNConfig(**settings)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, records):
    workdir = tmp_path_factory.mktemp("finished")
    train(config(workdir), records, records[:2])
    return workdir


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory, records):
    workdir = str(tmp_path_factory.mktemp("text"))
    train_text_encoder(dict(workdir=workdir, dataset="folder", image_size=64,
                            teacher_weights="random", embedding_dim=16, batch_size=4,
                            max_steps=1, feature_batch_size=8, precision="float32"), records)
    return workdir


# Damaged checkpoints, on a small checkpoint so each test takes milliseconds.

def saved_steps(workdir, steps):
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(step=step, values=tf.Variable(tf.zeros([1000])))
    manager = workdir_lib.checkpoint_manager(checkpoint, str(workdir), max_to_keep=5)
    for number in steps:
        step.assign(number)
        workdir_lib.save_checkpoint(manager, number, str(workdir))
    step.assign(-1)
    return checkpoint, step


def truncate(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


def test_damaged_newest_checkpoint_skipped(tmp_path):
    checkpoint, step = saved_steps(tmp_path, [0, 1, 2])
    truncate(tmp_path / "checkpoints" / "ckpt-2.data-00000-of-00001")
    manager = workdir_lib.checkpoint_manager(checkpoint, str(tmp_path), max_to_keep=5)
    assert workdir_lib.restore_latest(manager, checkpoint)
    assert int(step.numpy()) == 1


def test_empty_index_rebuilt(tmp_path):
    checkpoint, step = saved_steps(tmp_path, [0, 1, 2])
    (tmp_path / "checkpoints" / "checkpoint").write_text("")
    manager = workdir_lib.checkpoint_manager(checkpoint, str(tmp_path), max_to_keep=5)
    assert workdir_lib.restore_latest(manager, checkpoint)
    assert int(step.numpy()) == 2
    assert (tmp_path / "checkpoints" / "checkpoint.unreadable").is_file()


def test_garbled_index_rebuilt(tmp_path):
    # TensorFlow ignores an index it cannot parse, which would restart at step 0.
    checkpoint, step = saved_steps(tmp_path, [0, 1])
    (tmp_path / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-')
    manager = workdir_lib.checkpoint_manager(checkpoint, str(tmp_path), max_to_keep=5)
    assert workdir_lib.restore_latest(manager, checkpoint)
    assert int(step.numpy()) == 1


def test_interrupted_write_folder_removed(tmp_path):
    checkpoint, step = saved_steps(tmp_path, [0, 1])
    leftover = tmp_path / "checkpoints" / "ckpt-2_temp"
    leftover.mkdir()
    (leftover / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 100)
    manager = workdir_lib.checkpoint_manager(checkpoint, str(tmp_path), max_to_keep=5)
    assert not leftover.exists()
    assert workdir_lib.restore_latest(manager, checkpoint)
    assert int(step.numpy()) == 1


def test_all_checkpoints_damaged_raises(tmp_path):
    checkpoint, _ = saved_steps(tmp_path, [0, 1])
    for number in (0, 1):
        truncate(tmp_path / "checkpoints" / f"ckpt-{number}.data-00000-of-00001")
    manager = workdir_lib.checkpoint_manager(checkpoint, str(tmp_path), max_to_keep=5)
    with pytest.raises(workdir_lib.WorkdirError, match=r"No checkpoint .*ckpt-1.*ckpt-0"):
        workdir_lib.restore_latest(manager, checkpoint)


@slow
def test_resume_with_damaged_checkpoint_raises(tmp_path, finished_run, records):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    truncate(workdir / "checkpoints" / "ckpt-0.data-00000-of-00001")
    with pytest.raises(workdir_lib.WorkdirError, match="restart this run from step 0"):
        train(config(workdir), records, records[:2])


# Mismatched resumes and init_from.

def test_resume_with_other_preset_rejected(finished_run, records):
    with pytest.raises(workdir_lib.WorkdirError,
                       match="teacher_preset='released_code'.*teacher_preset='keras'"):
        train(config(finished_run, teacher_preset="keras"), records, records[:2])


@slow
def test_resume_with_other_text_encoder_rejected(tmp_path, records, text_encoder_dir):
    copy = str(tmp_path / "text_copy")
    shutil.copytree(text_encoder_dir, copy)
    train(config(tmp_path / "run", text_embeddings="encoder", text_encoder=text_encoder_dir),
          records, records[:2])
    with pytest.raises(workdir_lib.WorkdirError) as raised:
        train(config(tmp_path / "run", text_embeddings="encoder", text_encoder=copy),
              records, records[:2])
    assert f"text_encoder={os.path.abspath(text_encoder_dir)!r}" in str(raised.value)
    assert f"text_encoder={os.path.abspath(copy)!r}" in str(raised.value)


@slow
def test_init_from_text_workdir_rejected(tmp_path, records, text_encoder_dir):
    with pytest.raises(workdir_lib.WorkdirError, match="'text_encoder' run.*'sdn' run"):
        train(config(tmp_path / "stage2", stage=2, init_from=text_encoder_dir),
              records, records[:2])


# Resources.

@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_workdir(tmp_path, records):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(workdir_lib.WorkdirError, match="not writable"):
            train(config(folder / "run"), records, records[:2])
    finally:
        folder.chmod(0o755)


def test_workdir_under_proc_rejected(records):
    # /proc rejects new folders even for root, unlike a chmod-ed folder.
    with pytest.raises(workdir_lib.WorkdirError, match="'/proc/sdn_tf_run' is not writable"):
        train(config("/proc/sdn_tf_run"), records, records[:2])


def test_full_disk_names_workdir(tmp_path, records, monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk)
    workdir = str(tmp_path / "run")
    with pytest.raises(workdir_lib.CheckpointWriteError) as raised:
        train(config(workdir), records, records[:2])
    assert repr(workdir) in str(raised.value)
    assert "disk full" in str(raised.value)
    assert not os.path.exists(os.path.join(workdir, GENERATOR_WEIGHTS))


# Checkpoints written on a background thread.

def small_state():
    step = tf.Variable(0, dtype=tf.int64)
    values = tf.Variable(tf.zeros([1000]))
    return step, values, tf.train.Checkpoint(step=step, values=values)


def background_writer(workdir):
    step, values, checkpoint = small_state()
    with tf.device("/cpu:0"):
        shadow_step, shadow_values, shadow = small_state()
    writer = workdir_lib.CheckpointWriter(checkpoint, str(workdir), 3, shadow=shadow,
                                          pairs=[(step, shadow_step), (values, shadow_values)])
    return writer, step, values


def test_background_checkpoint_keeps_saved_values(tmp_path):
    writer, step, values = background_writer(tmp_path)
    step.assign(5)
    values.assign(tf.fill([1000], 5.0))
    writer.save(5)
    # Training goes on while the write runs; the checkpoint must not see it.
    values.assign_add(tf.ones([1000]))
    step.assign(6)
    latest = writer.latest_checkpoint
    assert latest.endswith("ckpt-5")
    restored_step, restored_values, restored = small_state()
    restored.restore(latest).assert_consumed()
    assert int(restored_step.numpy()) == 5
    np.testing.assert_array_equal(restored_values.numpy(), np.full(1000, 5.0))
    assert float(values.numpy()[0]) == 6.0


def test_background_write_failure_reraised(tmp_path):
    writer, _, _ = background_writer(tmp_path / "run")
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "checkpoints").write_text("a file where the folder should be")
    writer.save(1)  # Returns at once, and the write fails on its thread.
    with pytest.raises(workdir_lib.CheckpointWriteError, match="step-1 checkpoint in workdir"):
        writer.wait()
    writer.wait()  # the error is raised once


def test_shadow_must_mirror_training_variables(tmp_path):
    step, values, checkpoint = small_state()
    with pytest.raises(ValueError, match="do not mirror"):
        workdir_lib.CheckpointWriter(checkpoint, str(tmp_path), 3, shadow=checkpoint,
                                     pairs=[(values, tf.Variable(tf.zeros([999])))])


# Export atomicity.

@slow
def test_failed_export_keeps_previous(tmp_path, records, text_encoder_dir, monkeypatch):
    from sdn_tf.export import export

    workdir = str(tmp_path / "run")
    train(config(workdir, text_embeddings="encoder", text_encoder=text_encoder_dir),
          records, records[:2])
    export_dir = export(workdir, str(tmp_path / "export"))
    before = sorted(os.listdir(export_dir))

    def failing_write_out(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # keras.export.ExportArchive() returns an instance of a backend subclass
    # (TFExportArchive in Keras 3 on TensorFlow) whose own write_out is the
    # one called, so the patch goes on that class.
    archive_class = type(keras.export.ExportArchive())
    monkeypatch.setattr(archive_class, "write_out", failing_write_out)
    with pytest.raises(OSError, match="No space left"):
        export(workdir, export_dir)
    assert sorted(os.listdir(export_dir)) == before
    assert sorted(os.listdir(tmp_path)) == ["export", "run"]
    model = tf.saved_model.load(export_dir)
    images = model.signatures["serving_default"](captions=tf.constant(["a red bird"]))
    assert images["images"].shape == (1, 64, 64, 3)


# Kill and resume of the real sdn-train program.

def write_folder_dataset(root):
    rng = np.random.default_rng(1)
    lines = []
    for index in range(6):
        name = f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / name)
        lines.append(json.dumps({"file_name": name, "text": ["a red bird", "a blue box"],
                                 "class_id": index % 2}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_command(workdir, data_dir, text_dir):
    return [sys.executable, "-m", "sdn_tf.cli.train", f"--workdir={workdir}",
            "--dataset=folder", f"--data_dir={data_dir}", f"--text_encoder={text_dir}",
            "--teacher_weights=random", "--precision=float32", "--jit_compile=false",
            "--batch_size=4", "--max_steps=10", "--log_every=1", "--checkpoint_every=2",
            "--sample_every=100", "--seed=3", "--background_checkpoints=true"]


def newest_checkpoint_step(workdir):
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return None if path is None else int(path.rsplit("-", 1)[1])


def last_log_entry(workdir):
    with open(os.path.join(workdir, "train_log.jsonl"), encoding="utf-8") as file:
        return json.loads(file.read().splitlines()[-1])


@slow
def test_kill_and_resume_matches_uninterrupted(tmp_path):
    from sdn_tf.data.datasets import load_split

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_folder_dataset(data_dir)
    text_dir = str(tmp_path / "text")
    train_text_encoder(dict(workdir=text_dir, dataset="folder", data_dir=str(data_dir),
                            image_size=64, teacher_weights="random", embedding_dim=16,
                            batch_size=4, max_steps=1, feature_batch_size=8,
                            precision="float32"),
                       load_split("folder", str(data_dir), "train"))

    whole = str(tmp_path / "whole")
    result = subprocess.run(train_command(whole, data_dir, text_dir), capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]

    killed = str(tmp_path / "killed")
    process = subprocess.Popen(train_command(killed, data_dir, text_dir),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 1800
        while (newest_checkpoint_step(killed) or 0) < 2:
            assert process.poll() is None, "training ended before its step-2 checkpoint"
            assert time.monotonic() < deadline, "no step-2 checkpoint in time"
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 2.0))
        assert process.poll() is None, "training finished before the kill"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    saved = newest_checkpoint_step(killed)
    logged = last_log_entry(killed)["step"]
    # The newest checkpoint may still be written on its background thread when
    # the kill comes. The one before it is complete, so at most two intervals are lost.
    assert logged - saved <= 2 * 2, "lost more than two --checkpoint_every intervals"

    resumed = subprocess.run(train_command(killed, data_dir, text_dir), capture_output=True,
                             text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming at step {saved}." in resumed.stderr
    expected = last_log_entry(whole)
    actual = last_log_entry(killed)
    assert actual["step"] == expected["step"] == 10
    for name in ("loss", "image"):
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4)


# A run that fails at start-up must not block the corrected command.

def test_bad_teacher_file_fails_before_config(tmp_path, records):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        train(config(tmp_path / "run", teacher_weights=str(tmp_path / "missing.h5")),
              records, records[:2])
    assert not (tmp_path / "run" / workdir_lib.CONFIG_FILE).exists()


def test_run_without_checkpoint_restarts_with_new_settings(tmp_path, records):
    workdir = tmp_path / "run"
    stale = dict(vars(config(workdir)), stage=2, teacher_weights="imagenet")
    workdir_lib.open_workdir(str(workdir), "sdn", stale, ["stage"])
    train(config(workdir), records, records[:2])
    stored = workdir_lib.read_config(str(workdir))
    assert stored["stage"] == 1
    assert stored["teacher_weights"] == "random"


def test_check_resume_states(tmp_path):
    workdir = str(tmp_path)
    assert workdir_lib.check_resume(workdir, "sdn", {"stage": 1}, ["stage"]) == ("new", [])
    workdir_lib.open_workdir(workdir, "sdn", {"stage": 1}, ["stage"])
    assert workdir_lib.check_resume(workdir, "sdn", {"stage": 1}, ["stage"]) == ("resume", [])
    assert workdir_lib.check_resume(workdir, "sdn", {"stage": 2}, ["stage"]) == (
        "restart", [("stage", 1, 2)])
    saved_steps(tmp_path, [0])
    with pytest.raises(workdir_lib.WorkdirError, match="stage=1.*stage=2"):
        workdir_lib.check_resume(workdir, "sdn", {"stage": 2}, ["stage"])


def test_restart_removes_derived_files(tmp_path):
    workdir = str(tmp_path)
    workdir_lib.open_workdir(workdir, "text_encoder", {"teacher_weights": "imagenet"},
                             ["teacher_weights"])
    (tmp_path / "image_features").mkdir()
    (tmp_path / "image_features" / "train.npz").write_bytes(b"old features")
    resumed = workdir_lib.open_workdir(workdir, "text_encoder", {"teacher_weights": "random"},
                                       ["teacher_weights"], derived=["image_features"])
    assert not resumed
    assert not (tmp_path / "image_features").exists()
    assert workdir_lib.read_config(workdir)["teacher_weights"] == "random"


@slow
def test_retrained_text_encoder_rejected(tmp_path, records, text_encoder_dir):
    from sdn_tf.text.encoder import load_text_encoder, save_text_encoder

    encoder_dir = str(tmp_path / "text")
    shutil.copytree(text_encoder_dir, encoder_dir)
    encoder_config = dict(text_embeddings="encoder", text_encoder=encoder_dir)
    train(config(tmp_path / "stage1", **encoder_config), records, records[:2])
    # Training the encoder further rewrites its weights file.
    model = load_text_encoder(encoder_dir).model
    model.set_weights([weight + 0.01 for weight in model.get_weights()])
    save_text_encoder(model, encoder_dir)
    with pytest.raises(workdir_lib.WorkdirError, match="retrained or replaced"):
        train(config(tmp_path / "stage1", **encoder_config), records, records[:2])
    with pytest.raises(workdir_lib.WorkdirError, match="init_from.*retrained or replaced"):
        train(config(tmp_path / "stage2", stage=2, init_from=str(tmp_path / "stage1"),
                     **encoder_config), records, records[:2])
