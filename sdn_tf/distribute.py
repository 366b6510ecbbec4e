"""tf.distribute strategies for sdn-train: default, mirrored and multi_worker.

`--batch_size` is the global batch. Each replica computes the mean loss of
its share of the batch and divides it by the number of replicas in sync
(`scale_for_replicas`), so the gradients that the Keras optimizer sums across
replicas equal the gradient of the global batch mean.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

STRATEGIES = ("default", "mirrored", "multi_worker")


def build_strategy(name: str) -> tf.distribute.Strategy:
    """Build the strategy that --strategy names.

    default: TensorFlow's default strategy, one device, no change to training.
    mirrored: `MirroredStrategy` over every GPU, or over every logical CPU
      device when there is no GPU and more than one logical CPU is configured.
    multi_worker: `MultiWorkerMirroredStrategy`, whose cluster and task come
      from the TF_CONFIG environment variable. Build it before any other
      TensorFlow op runs, because it configures collective ops at startup.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            strategy = tf.distribute.MirroredStrategy()
        else:
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(devices=devices)
        logging.info("MirroredStrategy over %d replicas.", strategy.num_replicas_in_sync)
        return strategy
    if name == "multi_worker":
        task = read_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logging.info("MultiWorkerMirroredStrategy: task %s %d, %d replicas in sync.",
                     task["type"], task["index"], strategy.num_replicas_in_sync)
        return strategy
    raise ValueError(f"Unknown --strategy={name!r}; choose one of {', '.join(STRATEGIES)}.")


def read_tf_config() -> dict:
    """Validate TF_CONFIG for multi-worker training and return its "task" entry."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable, for example "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}.')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text!r}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker"):
        raise ValueError(f"TF_CONFIG has no cluster.worker list of host:port addresses: {text!r}.")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f'TF_CONFIG has no task {{"type": ..., "index": ...}} entry: {text!r}.')
    return task


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Return True for the worker that writes the run directory.

    Only multi-worker runs have more than one writer: there the chief is the
    "chief" task, or worker 0 when the cluster has no chief task.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


def worker_workdir(workdir: str, strategy: tf.distribute.Strategy) -> str:
    """Return the directory this process writes: the workdir, or a subfolder for non-chiefs.

    Every multi-worker process must save checkpoints, because saving runs
    collective ops. Non-chief workers write their own copy to
    WORKDIR/worker-N, from which they also resume.
    """
    if is_chief(strategy):
        return workdir
    resolver = strategy.cluster_resolver
    return os.path.join(workdir, f"{resolver.task_type}-{resolver.task_id}")


def scale_for_replicas(loss: tf.Tensor) -> tf.Tensor:
    """Divide a per-replica mean loss by the number of replicas in sync.

    Outside a distribution strategy, or with one replica, the loss is
    returned unchanged.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas == 1:
        return loss
    return loss * tf.cast(1.0 / replicas, loss.dtype)


def all_replicas_finite(loss: tf.Tensor) -> tf.Tensor:
    """Return a bool scalar that is True when the loss is finite on every replica.

    Every replica must take the same branch around the optimizer update,
    because the update all-reduces the gradients.
    """
    finite = tf.math.is_finite(loss)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return finite
    bad = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    return tf.equal(bad, 0.0)


def apply_if(predicate: tf.Tensor, apply_fn, args: tuple) -> None:
    """Run apply_fn(*args) on every replica when `predicate` is True.

    `predicate` must have the same value on every replica (see
    `all_replicas_finite`). MirroredStrategy rejects a tf.cond in replica
    context whose branch calls merge_call, as the optimizer update does, so
    there the cond runs in cross-replica context. Keras' LossScaleOptimizer
    (Keras 3) skips non-finite updates the same way.
    """
    if (not tf.distribute.has_strategy()
            or tf.__internal__.distribute.strategy_supports_no_merge_call()):
        tf.cond(predicate, lambda: apply_fn(*args), lambda: tf.constant(False))
        return

    def cross_replica(distribution, predicate, *args):
        first = distribution.experimental_local_results(predicate)[0]

        def run():
            distribution.extended.call_for_each_replica(apply_fn, args=args)
            return tf.constant(True)

        tf.cond(first, run, lambda: tf.constant(False))

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(predicate, *args))


def distributed_step(strategy: tf.distribute.Strategy, train_step, jit_compile: bool):
    """Wrap a per-replica train_step: run it on every replica and average its outputs.

    With the default strategy this is `tf.function(train_step)` unchanged.
    """
    if not isinstance(strategy, (tf.distribute.MirroredStrategy,
                                 tf.distribute.MultiWorkerMirroredStrategy)):
        return tf.function(train_step, jit_compile=jit_compile)
    # Keras' own fit() under a strategy compiles the per-replica step the same way.
    replica_step = tf.function(train_step, jit_compile=jit_compile) if jit_compile else train_step

    @tf.function
    def step(batch):
        outputs = strategy.run(replica_step, args=(batch,))
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in outputs.items()}

    return step
