"""--strategy: the strategy builder, loss scaling, mirrored and multi-worker training.

Logical CPU devices and MultiWorkerMirroredStrategy must be configured before
TensorFlow initialises, so the distributed runs happen in subprocesses.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from sdn_tf import distribute

REPO = pathlib.Path(__file__).resolve().parents[1]

# Writes six random images, then trains with float32 and random teacher weights
# at global batch 4 and prints {"label": train_log rows} as JSON.
SCRIPT_HEADER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from PIL import Image
    from sdn_tf.data.records import ImageRecord

    folder = sys.argv[1]
    rng = np.random.default_rng(0)
    records = []
    for index in range(6):
        path = os.path.join(folder, f"{index}.png")
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(
            name=f"image{index}", image_path=path, captions=["first", "second"],
            class_id=index % 2, embeddings=rng.normal(size=(2, 16)).astype(np.float32)))

    def run(workdir, strategy, max_steps, stage=1):
        from sdn_tf.train import SDNConfig, train
        config = SDNConfig(workdir=workdir, text_embeddings="pickle",
                           teacher_weights="random", batch_size=4, epochs=10,
                           max_steps=max_steps, log_every=2, checkpoint_every=2,
                           sample_every=100, precision="float32", strategy=strategy,
                           stage=stage)
        train(config, records, records[:2])
        with open(os.path.join(workdir, "train_log.jsonl")) as file:
            return [json.loads(line) for line in file]
""")

MIRRORED_SCRIPT = SCRIPT_HEADER + textwrap.dedent("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    out = sys.argv[2]
    logs = {
        "single": run(os.path.join(out, "single"), "default", 4, stage=2),
        "mirrored": run(os.path.join(out, "mirrored"), "mirrored", 4, stage=2),
    }
    run(os.path.join(out, "split"), "mirrored", 2, stage=2)
    logs["resumed"] = run(os.path.join(out, "split"), "mirrored", 4, stage=2)
    print("RESULT " + json.dumps(logs))
""")

WORKER_SCRIPT = SCRIPT_HEADER + textwrap.dedent("""
    logs = run(sys.argv[2], sys.argv[3], 4)
    print("RESULT " + json.dumps(logs))
""")

SCALE_SCRIPT = textwrap.dedent("""
    import tensorflow as tf
    from sdn_tf import distribute
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = distribute.build_strategy("mirrored")
    values = strategy.run(lambda: distribute.scale_for_replicas(tf.constant(3.0)))
    print("RESULT", strategy.num_replicas_in_sync,
          [float(v) for v in strategy.experimental_local_results(values)])
""")


def _environment(**extra):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    environment.pop("TF_CONFIG", None)
    environment.update(extra)
    return environment


def _result(output: str):
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return line[len("RESULT "):]
    raise AssertionError(f"subprocess printed no RESULT line:\n{output[-3000:]}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_default_strategy_one_replica():
    strategy = distribute.build_strategy("default")
    assert strategy.num_replicas_in_sync == 1
    assert strategy is tf.distribute.get_strategy()


def test_unknown_strategy_raises():
    with pytest.raises(ValueError, match="'parameter_server'"):
        distribute.build_strategy("parameter_server")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.build_strategy("multi_worker")


def test_tf_config_invalid_json(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.read_tf_config()


def test_tf_config_without_task(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}))
    with pytest.raises(ValueError, match="no task"):
        distribute.read_tf_config()


def test_scale_unchanged_by_default():
    value = distribute.scale_for_replicas(tf.constant(3.0))
    assert float(value) == 3.0


def test_default_run_is_chief(tmp_path):
    strategy = distribute.build_strategy("default")
    assert distribute.is_chief(strategy)
    assert distribute.worker_workdir(str(tmp_path), strategy) == str(tmp_path)


def test_scale_divides_by_replicas():
    result = subprocess.run([sys.executable, "-c", SCALE_SCRIPT], capture_output=True,
                            text=True, env=_environment(), timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    replicas, values = _result(result.stdout).split(" ", 1)
    assert int(replicas) == 2
    assert json.loads(values) == [1.5, 1.5]


@pytest.mark.slow
def test_mirrored_matches_single_device(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(images), str(tmp_path)],
        capture_output=True, text=True, env=_environment(), timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = json.loads(_result(result.stdout))
    single = [row["loss"] for row in logs["single"]]
    mirrored = [row["loss"] for row in logs["mirrored"]]
    assert [row["step"] for row in logs["mirrored"]] == [2, 4]
    np.testing.assert_allclose(mirrored, single, rtol=1e-3)
    # The resumed mirrored run continues from its step-2 checkpoint.
    assert [row["step"] for row in logs["resumed"]] == [2, 4]
    np.testing.assert_allclose(logs["resumed"][-1]["loss"], single[-1], rtol=1e-3)


@pytest.mark.slow
def test_multi_worker_matches_single_device(tmp_path):
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    processes = []
    for index in range(2):
        # Each process writes the same seeded images into its own folder.
        images = tmp_path / f"images-{index}"
        images.mkdir()
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(images), str(tmp_path / "multi"),
             "multi_worker"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_environment(TF_CONFIG=tf_config)))
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=900)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    single = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, str(images), str(tmp_path / "single"), "default"],
        capture_output=True, text=True, env=_environment(), timeout=900, check=False)
    assert single.returncode == 0, single.stderr[-3000:]
    chief = json.loads(_result(outputs[0]))
    reference = json.loads(_result(single.stdout))
    assert (tmp_path / "multi" / "worker-1" / "train_log.jsonl").is_file()
    np.testing.assert_allclose(chief[-1]["loss"], reference[-1]["loss"], rtol=1e-3)
