"""Run directories: the resolved configuration, checkpoints and resumption.

A workdir is the whole state of a run. `config.json` records what the run was
started with; a later run in the same workdir must agree on the settings that
shape the model or the loss, or it stops with an error that names both values.
Checkpoints are written by `tf.train.CheckpointManager`, which writes the data
files first and updates the `checkpoint` index file last, so a run killed while
saving still finds the previous checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Mapping, Optional, Sequence

import tensorflow as tf
from absl import logging

CONFIG_FILE = "config.json"


class WorkdirError(ValueError):
    """A workdir that cannot be used as asked: wrong kind, mismatched settings, unwritable."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written, most often because the disk is full."""


def write_json_atomically(path: str, payload: Mapping) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(payload, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def previous_summary(path: str, step: int) -> dict:
    """Return the JSON summary at `path` if a finished run wrote it at `step`, else {}.

    A rerun of a finished command trains no step, so it has no losses of its
    own. Its callers keep the recorded ones instead of erasing them.
    """
    try:
        with open(path, encoding="utf-8") as file:
            summary = json.load(file)
    except (OSError, ValueError):
        return {}
    if not isinstance(summary, dict) or summary.get("step") != step:
        return {}
    return summary


def read_config(workdir: str, flag: str = "--workdir") -> dict:
    """Read a workdir's config.json, raising WorkdirError when it is missing or corrupt.

    `flag` names the command-line flag that gave `workdir`, for the message.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise WorkdirError(
            f"{path!r} not found: {flag}={workdir!r} is not an sdn_tf workdir, or its run "
            f"never started. Point {flag} at the workdir of a finished run."
        )
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise WorkdirError(f"Could not read {path!r}: {error}.") from None


# The program that writes each kind of workdir, for error messages.
PROGRAM_OF_KIND = {"sdn": "sdn-train", "text_encoder": "sdn-train-text"}


def check_kind(config: Mapping, workdir: str, kind: str, flag: str = "--workdir") -> None:
    """Raise WorkdirError unless the workdir's config records a run of `kind`.

    `flag` names the command-line flag that gave `workdir`, for the message.
    """
    found = config.get("kind")
    if found != kind:
        program = PROGRAM_OF_KIND.get(kind, kind)
        raise WorkdirError(
            f"{flag}={workdir!r} contains a {found!r} run, but a {kind!r} run is needed "
            f"here. Point {flag} at the workdir of an {program} run."
        )


def has_progress(workdir: str) -> bool:
    """Return True when `workdir` has a checkpoint or a final weights file."""
    directory = os.path.join(workdir, "checkpoints")
    if os.path.isdir(directory) and _checkpoint_numbers_on_disk(directory):
        return True
    return any(name.endswith(".weights.h5") for name in os.listdir(workdir))


def check_resume(workdir: str, kind: str, config: Mapping,
                 must_match: Sequence[str],
                 defaults: Optional[Mapping] = None) -> tuple[str, list]:
    """Return how a run with `config` would use `workdir`, without writing anything.

    Returns (state, differences). state is "new" (no config.json), "resume"
    (the stored settings in `must_match` equal `config`'s) or "restart": the
    stored run differs but stopped before its first checkpoint, so nothing
    trained is lost by starting it again with `config`. A run that failed at
    start-up (a teacher download without internet, a missing --init_from)
    then does not block the corrected command. differences lists
    (key, stored, new) for "restart". `defaults` gives the value of a
    setting that a stored config lacks because it was written before the
    setting existed.

    Raises:
      WorkdirError: when the workdir contains a run of another kind, or a run
        with checkpoints whose settings differ, naming both values.
    """
    if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        return "new", []
    stored = read_config(workdir)
    check_kind(stored, workdir, kind)
    defaults = defaults or {}
    differences = [(key, stored.get(key, defaults.get(key)), config.get(key))
                   for key in must_match
                   if stored.get(key, defaults.get(key)) != config.get(key)]
    if not differences:
        return "resume", []
    if not has_progress(workdir):
        return "restart", differences
    key, old, new = differences[0]
    raise WorkdirError(
        f"Workdir {workdir!r} was started with {key}={old!r}, but this run asks for "
        f"{key}={new!r}. Use the stored value to resume, or choose a new --workdir."
    )


def open_workdir(workdir: str, kind: str, config: Mapping, must_match: Sequence[str],
                 derived: Sequence[str] = (), defaults: Optional[Mapping] = None) -> bool:
    """Create or reopen a workdir and return True when it already holds a run.

    Checks that the folder is writable before any training starts. A new run
    writes `config` as config.json; a resumed run compares the keys in
    `must_match` with the stored values and raises WorkdirError on the first
    difference, naming both values. A stored run without any checkpoint is
    started again with `config` instead (see `check_resume`), after removing
    the files and folders in `derived` (paths relative to the workdir that
    were computed under the old settings).
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-", delete=True)
        probe.write(b"x" * 4096)
        probe.flush()
        os.fsync(probe.fileno())
        probe.close()
    except OSError as error:
        raise WorkdirError(
            f"Workdir {workdir!r} is not writable ({error.strerror or error}). Choose a "
            "--workdir on a disk with free space where you have write permission."
        ) from None
    config_path = os.path.join(workdir, CONFIG_FILE)
    state, differences = check_resume(workdir, kind, config, must_match, defaults)
    if state == "resume":
        logging.info("Resuming the %s run in %s.", kind, workdir)
        return True
    if state == "restart":
        changes = ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in differences)
        logging.warning("The %s run in %s stopped before its first checkpoint; starting it "
                        "again with this run's settings (%s).", kind, workdir, changes)
        for name in derived:
            path = os.path.join(workdir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    write_json_atomically(config_path, dict(config, kind=kind))
    if state == "new":
        logging.info("Started a new %s run in %s.", kind, workdir)
    return False


def checkpoint_manager(checkpoint: tf.train.Checkpoint, workdir: str,
                       max_to_keep: int) -> tf.train.CheckpointManager:
    """Return a CheckpointManager for `workdir/checkpoints`, repairing an unreadable index.

    TensorFlow raises on an empty `checkpoint` index file and silently ignores
    one it cannot parse, which would restart a run from step 0. Such an index
    is rebuilt from the ckpt-N.index files on disk instead, with a warning.
    """
    directory = os.path.join(workdir, "checkpoints")
    index_path = os.path.join(directory, "checkpoint")
    _remove_interrupted_writes(directory)
    if os.path.isfile(index_path):
        try:
            state = tf.train.get_checkpoint_state(directory)
        except ValueError:
            state = None
        if state is None or not state.model_checkpoint_path:
            _rebuild_index(directory)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


def _remove_interrupted_writes(directory: str) -> None:
    """Delete the ckpt-N_temp folders that a run killed while saving leaves behind.

    TensorFlow writes a checkpoint's shards into such a folder and merges them
    into ckpt-N only when all are written, so the folder is never a usable
    checkpoint, and it can be as large as one.
    """
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if re.fullmatch(r"ckpt-\d+_temp.*", name) and os.path.isdir(path):
            shutil.rmtree(path)
            logging.warning("Removed %s, left by a checkpoint write that was interrupted.",
                            path)


def _checkpoint_numbers_on_disk(directory: str) -> list[int]:
    numbers = []
    for name in os.listdir(directory):
        match = re.fullmatch(r"ckpt-(\d+)\.index", name)
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def _rebuild_index(directory: str) -> None:
    numbers = _checkpoint_numbers_on_disk(directory)
    index_path = os.path.join(directory, "checkpoint")
    os.replace(index_path, index_path + ".unreadable")
    if not numbers:
        logging.warning("Checkpoint index %s was unreadable and no ckpt-N.index files exist; "
                        "moved it to %s.unreadable.", index_path, index_path)
        return
    # The CheckpointState text format, with names relative to `directory` as
    # CheckpointManager writes them. CheckpointManager pairs each path with a
    # timestamp and drops paths that have none, so the file times stand in.
    names = [f"ckpt-{number}" for number in numbers]
    lines = [f'model_checkpoint_path: "{names[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
    lines += [f"all_model_checkpoint_timestamps: "
              f"{os.path.getmtime(os.path.join(directory, name + '.index'))}" for name in names]
    temporary = index_path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    os.replace(temporary, index_path)
    logging.warning("Checkpoint index %s was unreadable; moved it to %s.unreadable and "
                    "rebuilt it from the checkpoint files %s.", index_path, index_path,
                    ", ".join(names))


def save_checkpoint(manager: tf.train.CheckpointManager, step: int, workdir: str) -> str:
    """Save the checkpoint of `step` and return its path.

    Raises CheckpointWriteError naming the workdir when the write fails, so a
    run never continues without its checkpoints. TensorFlow reports a full
    disk (ENOSPC) as ResourceExhaustedError, Python code as OSError.
    """
    try:
        return manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as error:
        disk_full = (getattr(error, "errno", None) == errno.ENOSPC
                     or isinstance(error, tf.errors.ResourceExhaustedError))
        if disk_full:
            advice = ("disk full. Free space on that disk or move the workdir to a larger one, "
                      "then rerun the same command")
        else:
            advice = f"check that {workdir!r} is still writable, then rerun the same command"
        raise CheckpointWriteError(
            f"Could not save the step-{step} checkpoint in workdir {workdir!r} ({error}): "
            f"{advice}; it resumes from the newest saved checkpoint."
        ) from error


class CheckpointWriter:
    """Checkpoint saving, in the training thread or on a background thread.

    Without `shadow`, save() writes `checkpoint` before it returns. With
    `shadow`, a tf.train.Checkpoint of the same object structure whose
    variables live in host memory, save() copies every training variable into
    its shadow (`pairs`, in the same order) and writes the shadow while
    training goes on. Because both checkpoints have the same structure, a
    checkpoint written from the shadow restores into the training objects.

    TensorFlow's own asynchronous checkpoints would avoid the copy, but they
    fail on Keras 3 variables ("tf.function only supports singleton
    tf.Variables", TensorFlow 2.21). The copy takes one more set of the saved
    variables in host memory, and copying 600 MB took about 20 ms on a 2-core
    CPU. It keeps its values while training updates the originals, because
    TensorFlow copies a variable's buffer before an in-place update whenever
    another tensor shares it. A failed background write is raised by the next
    save() or wait().
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, workdir: str, max_to_keep: int,
                 shadow: tf.train.Checkpoint | None = None,
                 pairs: Sequence[tuple] = ()):
        self.workdir = workdir
        self.background = shadow is not None
        if self.background:
            mismatched = [(real.name, tuple(real.shape), copy.name, tuple(copy.shape))
                          for real, copy in pairs
                          if tuple(real.shape) != tuple(copy.shape) or real.dtype != copy.dtype]
            if mismatched or not pairs:
                raise ValueError(f"The shadow variables do not mirror the training variables: "
                                 f"{mismatched[:3] or 'no pairs given'}.")
        self._pairs = list(pairs)
        self.manager = checkpoint_manager(shadow if self.background else checkpoint, workdir,
                                          max_to_keep)
        self._thread = None
        self._error = None

    def save(self, step: int) -> None:
        """Save the checkpoint of `step`: at once, or started on the background thread."""
        self.wait()
        if not self.background:
            path = save_checkpoint(self.manager, step, self.workdir)
            logging.info("Saved checkpoint %s.", path)
            return
        for variable, copy in self._pairs:
            copy.assign(variable)
        self._thread = threading.Thread(target=self._write, args=(step,),
                                        name=f"checkpoint-{step}")
        self._thread.start()

    def _write(self, step: int) -> None:
        started = time.perf_counter()
        try:
            path = save_checkpoint(self.manager, step, self.workdir)
        except BaseException as error:  # re-raised in the training thread by wait()
            self._error = error
            return
        logging.info("Saved checkpoint %s in the background (%.1f s).", path,
                     time.perf_counter() - started)

    def wait(self) -> None:
        """Wait for a background write to finish; raise the error it failed with."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def latest_checkpoint(self) -> str | None:
        """Path of the newest finished checkpoint, after any write in progress."""
        self.wait()
        return self.manager.latest_checkpoint


# What a damaged checkpoint raises on restore: a truncated data file raises
# IndexError ("Read less bytes than requested", TensorFlow 2.21), a damaged
# .index file a DataLossError or ValueError.
_RESTORE_ERRORS = (tf.errors.OpError, ValueError, IndexError, OSError)


def restore_latest(manager: tf.train.CheckpointManager, checkpoint: tf.train.Checkpoint) -> bool:
    """Restore the newest readable checkpoint, if any, and return whether one was restored.

    A damaged newest checkpoint (a run killed or a disk failing while it was
    written) is skipped with a warning and the one before it is restored, so
    a resumed run repeats at most the steps since that one. When checkpoints
    exist but none can be read, raises WorkdirError instead of silently
    starting again from step 0.
    """
    failures = []
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).expect_partial()
        except _RESTORE_ERRORS as error:
            failures.append(f"{os.path.basename(path)} ({type(error).__name__}: {error})")
            logging.warning("Could not restore checkpoint %s (%s: %s); trying the one before it.",
                            path, type(error).__name__, error)
            continue
        logging.info("Restored checkpoint %s.", path)
        return True
    if failures:
        raise WorkdirError(
            f"No checkpoint in {manager.directory!r} can be restored: {'; '.join(failures)}. "
            f"Delete {manager.directory!r} to restart this run from step 0, or choose a new "
            "--workdir."
        )
    return False
