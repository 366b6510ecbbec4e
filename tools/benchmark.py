"""Measure training speed, achieved TFLOP/s and peak memory per precision policy.

  python tools/benchmark.py --image_sizes=64,128,224 --output=benchmark.json

For Stage-I, Stage-II and the text encoder, at each --image_sizes and
--batch_size, the tool times a compiled training step (`SDNModel.train_step`,
or sdn-train-text's DS-SJE step of the char-CNN-RNN and the image projection)
under every policy of --policies, and VGG19's forward pass alone under
mixed_bfloat16. Each policy runs in its own
subprocess, so the global Keras dtype policy and the memory peak of one policy
cannot leak into another. The first --warmup steps compile and are not timed.

FLOPs per training step are counted from the layer shapes (2 FLOPs per
multiply-add), with F_G = `count_generator_flops`, F_D = `count_teacher_flops`
and F_T the forward FLOPs of the text encoder and the image projection
(1472 x --text_feature_grid^2 inputs) for the batch:

  Stage-I:  B * (F_D + 3 F_G)
            teacher forward on the real image, generator forward, generator
            backward = 2 F_G (input and weight gradients).
  Stage-II: B * (3 F_D + 3 F_G)
            teacher forward on the real and on the generated image, teacher
            backward to its input = 1 F_D (input gradients only, the frozen
            teacher has no weight gradients), generator forward and backward.
  Text:     3 F_T (forward, backward = 2 forward).
  VGG19:    B * F_D (forward only).

Achieved TFLOP/s = FLOPs per step * steps / seconds / 1e12. The multipliers
are the usual estimate for convolution and dense layers. Elementwise layers,
pooling, the losses and the optimizer update are not counted, so the figure
is a lower bound of the work done.

Peak memory is the resident-set high-water mark (VmHWM) of the policy's
process during one measurement on CPU. Linux resets it through
/proc/self/clear_refs before each measurement; memory that an earlier, smaller
measurement of the same process kept still counts, so measurements run from
small to large. Where the reset is not allowed, the figure is the process max
RSS from resource.getrusage so far. On GPU it is the peak of
tf.config.experimental.get_memory_info("GPU:0"), reset before each measurement.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS

# "+plain" times the step without the XLA-fused loss terms and optimizer update
# that sdn-train uses on the CPU (`Policy.fuse_ops`): a straightforward Keras
# step, the baseline of the speed-up target. For the text step, the other CPU
# policies time sdn-train-text --fused_update, and "+plain" its default.
CPU_POLICIES = ("float32+plain", "float32", "float32+xla", "mixed_bfloat16",
                "mixed_bfloat16+xla")
GPU_POLICIES = ("float32", "mixed_float16+xla", "mixed_bfloat16+xla")
MODELS = ("stage1", "stage2", "text", "vgg19_forward")
EMBEDDING_DIM = 1024  # Size of the rows of StackGAN's char-CNN-RNN embeddings.
TEXT_CLASSES = 6  # Distinct class ids in a text batch, so DS-SJE has negatives.
# The throughput targets: Stage-II at 224 under the chosen policy against float32.
TARGET_SPEEDUP = 5.0
TARGET_MEMORY_GIB = 8.0


def parse_policy(name: str) -> tuple[str, bool]:
    """Split "mixed_bfloat16+xla" into ("mixed_bfloat16", True); "+plain" means no XLA."""
    precision, _, suffix = name.partition("+")
    if (precision not in ("float32", "mixed_bfloat16", "mixed_float16")
            or suffix not in ("", "xla", "plain")):
        raise ValueError(
            f"Invalid policy {name!r}: use float32, mixed_bfloat16 or mixed_float16, "
            "optionally followed by +xla or +plain.")
    return precision, suffix == "xla"


def baseline_policy(policies) -> str:
    """Return the policy of the speed-up baseline: float32+plain when timed, else float32."""
    return "float32+plain" if "float32+plain" in policies else "float32"


def parse_sizes(values) -> list[int]:
    sizes = []
    for value in values:
        try:
            size = int(value)
        except ValueError:
            raise ValueError(f"Invalid --image_sizes entry {value!r}: not an integer.") from None
        if size % 32 or not 64 <= size <= 224:
            raise ValueError(f"Invalid --image_sizes entry {size}: use a multiple of 32 "
                             "from 64 to 224.")
        sizes.append(size)
    return sorted(set(sizes))


def text_encoder_flops(model, batch_size: int) -> int:
    """Return the forward FLOPs of the char-CNN-RNN for one batch, from its layer shapes."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv1D):
            steps, filters = layer.output.shape[1], layer.output.shape[2]
            kernel_size, in_channels = layer.kernel.shape[0], layer.kernel.shape[1]
            flops += 2 * steps * kernel_size * in_channels * filters
        elif isinstance(layer, (keras.layers.GRU, keras.layers.SimpleRNN)):
            steps, in_features = layer.input.shape[1], layer.input.shape[2]
            units = layer.units
            gates = 3 if isinstance(layer, keras.layers.GRU) else 1
            flops += steps * gates * 2 * (in_features * units + units * units)
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(flops * batch_size)


# ---------------------------------------------------------------------------
# Child process: one policy, every model and size.


class _PeakMemory:
    """Peak memory of the current process during one measurement, in bytes."""

    def __init__(self, on_gpu: bool):
        self.on_gpu = on_gpu
        self.method = "unset"

    def reset(self) -> None:
        import tensorflow as tf

        if self.on_gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
            self.method = "tf.config.experimental.get_memory_info peak"
            return
        try:
            # Writing 5 resets VmHWM, the resident high-water mark (Linux >= 4.0).
            with open("/proc/self/clear_refs", "w", encoding="ascii") as file:
                file.write("5")
            self.method = "VmHWM reset per measurement"
        except OSError:
            self.method = "getrusage max RSS of the process"

    def read(self) -> int:
        import tensorflow as tf

        if self.on_gpu:
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        if self.method.startswith("VmHWM"):
            with open("/proc/self/status", encoding="ascii") as file:
                for line in file:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time_steps(step, warmup: int, steps: int, max_seconds: float) -> tuple[int, float]:
    for _ in range(warmup):
        _block(step())
    start = time.perf_counter()
    done = 0
    while done < steps:
        _block(step())
        done += 1
        if time.perf_counter() - start >= max_seconds:
            break
    return done, time.perf_counter() - start


def _block(result) -> None:
    """Wait for the step's outputs, so timing covers the whole step."""
    import tensorflow as tf

    for value in tf.nest.flatten(result):
        value.numpy()


def _policy(precision: str, use_xla: bool):
    """Return the `sdn_tf.precision.Policy` of a timed step on this machine's device."""
    import tensorflow as tf

    from sdn_tf import precision as precision_lib

    device = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    return precision_lib.Policy(precision, use_xla, device)


def _sdn_step(stage: int, image_size: int, batch_size: int, precision: str, use_xla: bool,
              plain: bool = False):
    import numpy as np
    import tensorflow as tf

    from sdn_tf import precision as precision_lib
    from sdn_tf.generator import build_generator
    from sdn_tf.losses import stage_terms
    from sdn_tf.model import SDNModel
    from sdn_tf.teacher import build_teacher

    policy = _policy(precision, use_xla)
    teacher = build_teacher(image_size, "random", "released_code")
    generator = build_generator(image_size, EMBEDDING_DIM, 1, seed=0)
    # The training step as sdn-train builds it under the default strategy.
    model = SDNModel(generator, teacher, stage_terms(stage), "released_code", 1,
                     fuse_ops=policy.fuse_ops and not plain)
    model.optimizer = precision_lib.make_optimizer(policy, 1e-4)
    model.optimizer.build(generator.trainable_variables)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch_size, image_size, image_size, 3),
                                      dtype=np.uint8))
    embeddings = tf.constant(rng.normal(size=(batch_size, EMBEDDING_DIM)).astype(np.float32))
    compiled = tf.function(model.train_step, jit_compile=use_xla)
    return lambda: compiled((images, embeddings))["loss"]


def _text_step(batch_size: int, precision: str, use_xla: bool, plain: bool = False):
    """Return sdn-train-text's DS-SJE step (encoder and image projection) and its forward FLOPs."""
    import numpy as np
    import tensorflow as tf

    from sdn_tf import precision as precision_lib
    from sdn_tf.text import encoder as encoder_lib
    from sdn_tf.text import train as text_train

    policy = _policy(precision, use_xla)
    model = encoder_lib.build_text_encoder(EMBEDDING_DIM, dtype=precision,
                                           use_cudnn=False if use_xla else "auto")
    feature_dim = text_train.image_feature_dim(FLAGS.text_feature_grid)
    projection = text_train.build_image_projection(EMBEDDING_DIM, 0, feature_dim)
    optimizer = precision_lib.make_optimizer(policy, 1e-4)
    optimizer.build(model.trainable_variables + projection.trainable_variables)
    rng = np.random.default_rng(0)
    captions = ["a small bird with a red crown and white belly"] * batch_size
    onehot = encoder_lib.captions_to_onehot(captions)
    features = tf.constant(rng.normal(size=(batch_size, feature_dim)).astype(np.float32))
    class_ids = tf.constant(np.arange(batch_size) % TEXT_CLASSES, tf.int32)
    step = text_train._make_train_step(model, projection, optimizer, 1.0, use_xla,
                                       fuse_update=policy.fuse_ops and not plain)
    flops = text_encoder_flops(model, batch_size) + batch_size * 2 * feature_dim * EMBEDDING_DIM
    return (lambda: step(onehot, features, class_ids)[0]), flops


def _vgg_forward(image_size: int, batch_size: int, use_xla: bool):
    import numpy as np
    import tensorflow as tf

    from sdn_tf.teacher import build_teacher

    teacher = build_teacher(image_size, "random", "released_code")
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3))
                         .astype(np.float32))
    compiled = tf.function(lambda x: teacher(x, training=False)["pool5"], jit_compile=use_xla)
    return lambda: compiled(images)


def fresh_session(precision: str) -> None:
    """Clear Keras' state between measurements, then set the dtype policy.

    keras.backend.clear_session() also resets the global dtype policy to
    float32, so the policy must be set after it, for every measurement.
    """
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)


def run_policy(policy_name: str, models, sizes, batch_size: int, warmup: int, steps: int,
               max_seconds: float) -> list[dict]:
    """Time every model and size under one policy in this process.

    Prints each result row as a JSON line as soon as it is measured, so the
    parent keeps the finished rows of a policy that times out, and returns them.
    """
    import tensorflow as tf

    from sdn_tf.generator import count_generator_flops
    from sdn_tf.teacher import count_teacher_flops

    precision, use_xla = parse_policy(policy_name)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    memory = _PeakMemory(on_gpu)
    rows = []
    jobs = []
    if "text" in models:
        jobs.append(("text", None))
    for size in sizes:
        jobs += [(model, size) for model in ("vgg19_forward", "stage1", "stage2")
                 if model in models]
    for model_name, size in jobs:
        fresh_session(precision)
        memory.reset()
        flops_per_step = None
        if model_name == "text":
            step, flops_per_step = _text_step(batch_size, precision, use_xla,
                                              plain=policy_name.endswith("+plain"))
        elif model_name == "vgg19_forward":
            step = _vgg_forward(size, batch_size, use_xla)
            flops_per_step = batch_size * count_teacher_flops(size)
        else:
            stage = 1 if model_name == "stage1" else 2
            step = _sdn_step(stage, size, batch_size, precision, use_xla,
                             plain=policy_name.endswith("+plain"))
            forward_g = count_generator_flops(size, EMBEDDING_DIM, 1)
            forward_d = count_teacher_flops(size)
            teacher_passes = 1 if stage == 1 else 3
            flops_per_step = batch_size * (teacher_passes * forward_d + 3 * forward_g)
        done, seconds = _time_steps(step, warmup, steps, max_seconds)
        row = {
            "model": model_name, "image_size": size, "policy": policy_name,
            "batch_size": batch_size, "timed_steps": done, "seconds": seconds,
            "examples_per_second": done * batch_size / seconds,
            "flops_per_step": flops_per_step,
            "tflops_per_second": flops_per_step * done / seconds / 1e12,
            "peak_memory_bytes": memory.read(), "memory_method": memory.method,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Parent process: one child per policy, then the JSON and the table.


def _child_command(policy: str, models) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), f"--worker_policy={policy}",
            f"--image_sizes={','.join(FLAGS.image_sizes)}", f"--batch_size={FLAGS.batch_size}",
            f"--models={','.join(models)}", f"--warmup={FLAGS.warmup}", f"--steps={FLAGS.steps}",
            f"--max_seconds={FLAGS.max_seconds}",
            f"--text_feature_grid={FLAGS.text_feature_grid}"]


def _run_child(policy: str, models) -> tuple[list[dict], str]:
    """Run one policy in a subprocess; return its rows and an error message or ""."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root,
                                                              environment.get("PYTHONPATH")]))
    logging.info("Running policy %s.", policy)
    try:
        result = subprocess.run(_child_command(policy, models), capture_output=True, text=True,
                                env=environment, timeout=FLAGS.policy_timeout, check=False)
    except subprocess.TimeoutExpired as error:
        output = error.stdout or ""
        if isinstance(output, bytes):
            output = output.decode("utf-8", "replace")
        return _parse_rows(output), f"timed out after {FLAGS.policy_timeout} s (--policy_timeout)"
    rows = _parse_rows(result.stdout)
    if result.returncode != 0:
        return rows, f"exit status {result.returncode}: {result.stderr.strip()[-2000:]}"
    return rows, ""


def _parse_rows(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _machine() -> dict:
    import tensorflow as tf

    from sdn_tf import precision as precision_lib

    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": precision_lib.cpu_supports_bf16(),
        "gpus": [detail.get("device_name", "GPU") for detail in details],
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(), "tensorflow": tf.__version__,
    }


def _find(rows, model, size, policy):
    for row in rows:
        if row["model"] == model and row["image_size"] == size and row["policy"] == policy:
            return row
    return None


def summarise_targets(rows, policies, sizes) -> dict:
    """Check the Stage-II throughput, TFLOP/s and memory targets at the largest size."""
    size = max(sizes)
    baseline_name = baseline_policy(policies)
    baseline = _find(rows, "stage2", size, baseline_name)
    candidates = [row for row in rows if row["model"] == "stage2" and row["image_size"] == size
                  and row["policy"] != baseline_name]
    if baseline is None or not candidates:
        return {"note": f"Stage-II at {size} needs {baseline_name} and another policy to "
                        "compare."}
    best = max(candidates, key=lambda row: row["examples_per_second"])
    vgg = _find(rows, "vgg19_forward", size, "mixed_bfloat16")
    summary = {
        "image_size": size, "best_policy": best["policy"],
        "baseline_policy": baseline_name,
        "speedup_over_float32": best["examples_per_second"] / baseline["examples_per_second"],
        "speedup_target": TARGET_SPEEDUP,
        "peak_memory_gib": best["peak_memory_bytes"] / 2 ** 30,
        "memory_target_gib": TARGET_MEMORY_GIB,
    }
    if vgg is not None:
        summary["tflops_fraction_of_vgg19_bf16_forward"] = (
            best["tflops_per_second"] / vgg["tflops_per_second"])
        summary["tflops_fraction_target"] = 0.5
    return summary


def markdown_table(rows) -> str:
    lines = ["| Model | Size | Policy | examples/s | TFLOP/s | Peak memory (GiB) | Timed steps |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        size = row["image_size"] if row["image_size"] is not None else "-"
        lines.append(
            f"| {row['model']} | {size} | {row['policy']} | {row['examples_per_second']:.2f} "
            f"| {row['tflops_per_second']:.3f} | {row['peak_memory_bytes'] / 2 ** 30:.2f} "
            f"| {row['timed_steps']} |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    sizes = parse_sizes(FLAGS.image_sizes)
    allowed = MODELS if FLAGS.worker_policy else MODELS[:3]
    unknown = [name for name in FLAGS.models if name not in allowed]
    if unknown:
        raise app.UsageError(f"Unknown --models {unknown}; use stage1, stage2 or text.")
    if FLAGS.worker_policy:
        models = list(FLAGS.models)
        run_policy(FLAGS.worker_policy, models, sizes, FLAGS.batch_size, FLAGS.warmup,
                   FLAGS.steps, FLAGS.max_seconds)
        return

    import tensorflow as tf

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    policies = FLAGS.policies or list(GPU_POLICIES if on_gpu else CPU_POLICIES)
    for policy in policies:
        parse_policy(policy)
    machine = _machine()
    started = time.time()
    rows, errors = [], {}
    for policy in policies:
        policy_rows, error = _run_child(policy, [m for m in FLAGS.models])
        rows += policy_rows
        if error:
            errors[policy] = error
            logging.error("Policy %s failed: %s", policy, error)
    # VGG19's bf16 forward pass alone, the reference for achieved TFLOP/s.
    vgg_policy = "mixed_bfloat16+xla" if on_gpu else "mixed_bfloat16"
    vgg_rows, error = _run_child(vgg_policy, ["vgg19_forward"])
    for row in vgg_rows:
        row["policy"] = "mixed_bfloat16"
    rows += vgg_rows
    if error:
        errors["vgg19_forward"] = error
    machine["load_average_end"] = list(os.getloadavg())
    result = {
        "flags": {name: FLAGS[name].value for name in
                  ("image_sizes", "batch_size", "policies", "models", "warmup", "steps",
                   "max_seconds", "text_feature_grid")},
        "machine": machine, "seconds": time.time() - started, "rows": rows,
        "targets": summarise_targets(rows, policies, sizes), "errors": errors,
    }
    with open(FLAGS.output, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
    markdown_path = FLAGS.markdown or os.path.splitext(FLAGS.output)[0] + ".md"
    table = markdown_table(rows)
    with open(markdown_path, "w", encoding="utf-8") as file:
        file.write(table)
    print(table)
    print(json.dumps(result["targets"], indent=2))
    logging.info("Wrote %s and %s in %.0f s.", FLAGS.output, markdown_path, result["seconds"])


def define_flags() -> None:
    """Define the tool's flags; only when run as a program, so tests can import it."""
    flags.DEFINE_list("image_sizes", ["64", "128", "224"],
                      "Square image sides in pixels, multiples of 32 from 64 to 224.")
    flags.DEFINE_integer("batch_size", 12, "Examples per training step.", lower_bound=1)
    flags.DEFINE_integer("text_feature_grid", 1, "sdn-train-text's --feature_grid for the text "
                         "step: the image projection has 1472 x grid^2 inputs.", lower_bound=1)
    flags.DEFINE_list("policies", [], "Policies to compare, each a Keras dtype policy name "
                      "with an optional +xla suffix (or +plain: a step without the XLA-fused loss terms "
                      "and update of the CPU default). Empty: "
                      f"{','.join(CPU_POLICIES)} on CPU, {','.join(GPU_POLICIES)} on GPU.")
    flags.DEFINE_list("models", ["stage1", "stage2", "text"],
                      "Training steps to time: stage1, stage2, text.")
    flags.DEFINE_integer("warmup", 1, "Untimed steps per measurement (the first compiles).",
                         lower_bound=1)
    flags.DEFINE_integer("steps", 3, "Maximum timed steps per measurement.", lower_bound=1)
    flags.DEFINE_float("max_seconds", 60.0, "Stop timing a measurement after this many seconds "
                       "once at least one step is timed.", lower_bound=0.0)
    flags.DEFINE_string("output", "benchmark.json", "JSON file for the results.")
    flags.DEFINE_string("markdown", None, "Markdown file for the results table (default: "
                        "--output with .md).")
    flags.DEFINE_integer("policy_timeout", 900, "Seconds one policy's subprocess may run "
                         "before it is stopped and reported as timed out.", lower_bound=1)
    # Internal: set by the parent process to run one policy in a child.
    flags.DEFINE_string("worker_policy", None, "Run one policy and print its JSON (internal).")


if __name__ == "__main__":
    define_flags()
    app.run(main)
