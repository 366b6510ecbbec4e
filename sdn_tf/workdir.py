"""Run directories: the resolved configuration, checkpoints and resumption.

A workdir is the whole state of a run. `config.json` records what the run was
started with; a later run in the same workdir must agree on the settings that
shape the model or the loss, or it stops with an error that names both values.
Checkpoints are written by `tf.train.CheckpointManager`, which writes the data
files first and updates the `checkpoint` index file last, so a run killed while
saving still finds the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Sequence

import tensorflow as tf
from absl import logging

CONFIG_FILE = "config.json"


class WorkdirError(ValueError):
    """A workdir that cannot be used as asked: wrong kind, mismatched settings, unwritable."""


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


def read_config(workdir: str) -> dict:
    """Read a workdir's config.json, raising WorkdirError when it is missing or corrupt."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise WorkdirError(
            f"{path!r} not found: {workdir!r} is not an sdn_tf workdir, or its run never "
            "started. Pass the --workdir of a finished run."
        )
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise WorkdirError(f"Could not read {path!r}: {error}.") from None


def check_kind(config: Mapping, workdir: str, kind: str) -> None:
    """Raise WorkdirError unless the workdir's config says it holds a run of `kind`."""
    found = config.get("kind")
    if found != kind:
        raise WorkdirError(
            f"{workdir!r} holds a {found!r} run, but a {kind!r} run is needed here."
        )


def open_workdir(workdir: str, kind: str, config: Mapping, must_match: Sequence[str]) -> bool:
    """Create or reopen a workdir and return True when it already holds a run.

    Checks that the folder is writable before any training starts. A new run
    writes `config` as config.json; a resumed run compares the keys in
    `must_match` with the stored values and raises WorkdirError on the first
    difference, naming both values.
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
    if not os.path.exists(config_path):
        write_json_atomically(config_path, dict(config, kind=kind))
        logging.info("Started a new %s run in %s.", kind, workdir)
        return False
    stored = read_config(workdir)
    check_kind(stored, workdir, kind)
    for key in must_match:
        if stored.get(key) != config.get(key):
            raise WorkdirError(
                f"Workdir {workdir!r} was started with {key}={stored.get(key)!r}, but this run "
                f"asks for {key}={config.get(key)!r}. Use the stored value to resume, or "
                "choose a new --workdir."
            )
    logging.info("Resuming the %s run in %s.", kind, workdir)
    return True


def checkpoint_manager(checkpoint: tf.train.Checkpoint, workdir: str,
                       max_to_keep: int) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(
        checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep
    )


def restore_latest(manager: tf.train.CheckpointManager, checkpoint: tf.train.Checkpoint) -> bool:
    """Restore the newest checkpoint, if any, and return whether one was restored."""
    latest = manager.latest_checkpoint
    if latest is None:
        return False
    checkpoint.restore(latest).expect_partial()
    logging.info("Restored checkpoint %s.", latest)
    return True
