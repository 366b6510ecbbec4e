"""Time the parts of a training step: teacher and generator, forward and backward.

  python tools/time_step_parts.py --image_size=224 --batch_size=12 --precision=mixed_bfloat16

tools/benchmark.py times whole steps. This tool times the parts of a
Stage-II step one by one, so a slow part shows up. The parts are the
teacher's forward pass, the teacher's forward pass with gradients to its input
(what Stage-II backpropagates through), the generator's forward pass, and the
generator's forward and backward pass with gradients to every weight, once
as the generator computes them and once with oneDNN's Conv2DBackpropFilter
for every kernel gradient (see sdn_tf.layers.SmallMapConv2D). Each part runs
as one tf.function on random inputs with random teacher weights; the first
call compiles and is not timed. The parts take turns, --repeats rounds, so a
machine whose speed drifts slows them alike, and the fastest call of each is
reported. The optimizer update is not included.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_integer("image_size", 224, "Image size in pixels (a multiple of 32, 64 to 224).")
flags.DEFINE_integer("batch_size", 12, "Examples per call.", lower_bound=1)
flags.DEFINE_enum("precision", "mixed_bfloat16", ("float32", "mixed_bfloat16", "mixed_float16"),
                  "Keras dtype policy of both models.")
flags.register_validator(
    "image_size", lambda size: size % 32 == 0 and 64 <= size <= 224,
    "--image_size must be a multiple of 32 from 64 to 224 (64, 96, ..., 224).")
flags.DEFINE_integer("repeats", 2, "Timed rounds of calls; each part's fastest is reported.",
                     lower_bound=1)


def _sum_of_means(values) -> "tf.Tensor":
    import tensorflow as tf

    return tf.add_n([tf.reduce_mean(tf.cast(value, tf.float32)) for value in values])


def build_parts(image_size: int, batch_size: int) -> dict:
    """Return {part name: zero-argument callable} for the current dtype policy."""
    import numpy as np
    import tensorflow as tf

    from sdn_tf import layers
    from sdn_tf.generator import build_generator
    from sdn_tf.teacher import build_teacher

    teacher = build_teacher(image_size, "random")
    generator = build_generator(image_size, 1024)
    # A map side of 0 turns the matrix-product kernel gradient off for the
    # layers built while it is set.
    small_map_side = layers.SMALL_MAP_SIDE
    layers.SMALL_MAP_SIDE = 0
    try:
        native_generator = build_generator(image_size, 1024)
    finally:
        layers.SMALL_MAP_SIDE = small_map_side
    native_generator.set_weights(generator.get_weights())
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3))
                         .astype(np.float32))
    embeddings = tf.constant(rng.normal(size=(batch_size, 1024)).astype(np.float32))

    @tf.function
    def teacher_forward():
        return teacher(images)["pool5"]

    @tf.function
    def teacher_input_gradient():
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = _sum_of_means(teacher(images).values())
        return tape.gradient(loss, images)

    @tf.function
    def generator_forward():
        return generator(embeddings)["image"]

    def weight_gradients(model):
        @tf.function
        def gradients():
            with tf.GradientTape() as tape:
                loss = _sum_of_means(model(embeddings).values())
            return tape.gradient(loss, model.trainable_variables)

        return gradients

    return {
        "teacher forward": teacher_forward,
        "teacher forward + input gradient": teacher_input_gradient,
        "generator forward": generator_forward,
        "generator forward + weight gradients": weight_gradients(generator),
        "generator forward + weight gradients, native kernel gradients":
            weight_gradients(native_generator),
    }


def time_parts(parts: dict, repeats: int) -> dict:
    """Return {name: fastest of `repeats` timed calls, in seconds}, the parts taking turns.

    Each part's first call compiles it and is not timed.
    """
    import tensorflow as tf

    def run(function):
        tf.nest.map_structure(lambda value: value.numpy(), function())

    for function in parts.values():
        run(function)
    times = {name: [] for name in parts}
    for _ in range(repeats):
        for name, function in parts.items():
            start = time.perf_counter()
            run(function)
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    import keras

    keras.mixed_precision.set_global_policy(FLAGS.precision)
    results = {}
    for name, seconds in time_parts(build_parts(FLAGS.image_size, FLAGS.batch_size),
                                    FLAGS.repeats).items():
        results[name] = round(seconds, 4)
        print(f"{name}: {seconds:.3f} s", flush=True)
    print(json.dumps({"image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
                      "precision": FLAGS.precision, "seconds": results}))


if __name__ == "__main__":
    sys.exit(app.run(main))
