"""Train, export and evaluate every SDN ablation scheme; write a table of their metrics.

  python tools/run_ablation.py --dataset=shapes --out=runs/ablation --steps=150 \
      --text_encoder=runs/text --teacher_weights=random --inception_weights=random

Each scheme of Yuan & Peng (ACM MM 2018, Table 3) gets --steps training steps.
image_only, stage1, stage2 and stage1_plus_stage2 train in one run each. sdn
and diverse train Stage-I for half the steps, then Stage-II from it for the
other half, as the SDN schedule does. Every final run is exported and evaluated
with sdn-eval, and OUT/ablation.md and OUT/ablation.json list the metrics next
to Table 3's CUB Inception scores. OUT/commands.txt lists the equivalent
sdn-train, sdn-export and sdn-eval commands. Figures go to OUT/figures.

Everything runs in this process, which saves the TensorFlow start-up of ~20
processes. A rerun skips runs whose final.json reaches the requested steps,
exports that exist and evaluations whose metrics.json exists.

The Inception score and FID with --inception_weights=random only compare runs
of this script with each other; they are not comparable with published scores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from typing import Optional

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdn_tf import schemes  # noqa: E402
from sdn_tf.generator import GENERATOR_INITS  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_enum("dataset", "shapes", ("shapes", "cub", "flowers", "folder", "tfrecord"),
                  "Dataset to train and evaluate on.")
flags.DEFINE_string("data_dir", None, "Dataset folder (shapes: the cache folder; default "
                    "~/.cache/sdn_tf or $SDN_TF_DATA_DIR).")
flags.DEFINE_string("out", None, "Folder for the runs, exports, evaluations and tables.")
flags.DEFINE_integer("steps", 150, "Training steps per scheme; sdn and diverse split them "
                     "evenly between Stage-I and Stage-II.", lower_bound=2)
flags.DEFINE_list("schemes", list(schemes.SCHEMES), "Schemes to run, separated by commas.")
flags.DEFINE_string("text_encoder", None, "Workdir of a finished sdn-train-text run. "
                    "Without it, one is trained in OUT/text for --text_steps steps.")
flags.DEFINE_integer("text_steps", 600, "Steps of the text encoder trained when "
                     "--text_encoder is not given.", lower_bound=1)
flags.DEFINE_integer("image_size", 64, "Training image size in pixels.")
flags.DEFINE_integer("batch_size", 12, "Examples per training step.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_string("teacher_weights", "imagenet", "VGG19 weights: imagenet, random or a "
                    "local .h5 path.")
flags.DEFINE_integer("num_images", 2, "Images per caption of the diverse scheme.",
                     lower_bound=2)
flags.DEFINE_bool("init_image_bias", True, "Start every run's output bias at the mean "
                  "training colour (sdn-train --init_image_bias); shortens short runs.")
flags.DEFINE_string("inception_weights", "imagenet", "Inception-v3 weights of sdn-eval; "
                    "random works offline but its scores are not comparable with the paper.")
flags.DEFINE_integer("max_captions", 200, "Test captions per evaluation, spread over the "
                     "split (0: all).", lower_bound=0)
flags.DEFINE_list("skip", [], "sdn-eval metrics to leave out (is, fid, ssim, fsim, "
                  "r_precision, colour).")
flags.DEFINE_integer("workers", 1, "sdn-eval processes for SSIM and FSIM.", lower_bound=1)
flags.DEFINE_integer("figure_captions", 6, "Test captions in the comparison and diverse "
                     "figures.", lower_bound=1)
flags.DEFINE_string("interpolate", "", "Two captions separated by '|' for the "
                    "interpolation strip of the sdn run; empty: the first two test captions "
                    "of different classes.")
flags.DEFINE_integer("seed", 0, "Seed of every run.")
flags.DEFINE_enum("generator_init", "released", GENERATOR_INITS,
                  "Generator initialiser of every run (sdn-train --generator_init).")
flags.DEFINE_float("image_gain", 1.0, "Fixed factor on the generator's image in every run "
                   "(sdn-train --image_gain).", lower_bound=1e-6)
flags.DEFINE_bool("normalise_embeddings", False, "Normalise the caption embeddings in every "
                  "run (sdn-train --normalise_embeddings).")
flags.DEFINE_string("tap_weights", "", "Tap weights of every run (sdn-train --tap_weights), "
                    "for example all=0.05.")
flags.mark_flag_as_required("out")


# Column titles of the comparison figure, short enough for a 64-pixel column.
FIGURE_LABELS = {"image_only": "image", "stage1": "Stage-I", "stage2": "Stage-II",
                 "stage1_plus_stage2": "I + II", "diverse": "diverse", "sdn": "SDN"}


@dataclasses.dataclass
class Stage:
    """One sdn-train run of a scheme."""

    name: str
    scheme: str
    stage: int
    steps: int
    num_images: int = 1
    init_from: Optional[str] = None


def plan(scheme: str, steps: int, num_images: int) -> list:
    """Return the sdn-train runs of `scheme`; the last one is exported."""
    if scheme in ("sdn", "diverse"):
        images = num_images if scheme == "diverse" else 1
        first = steps // 2
        return [Stage(f"{scheme}_stage1", scheme, 1, first, images),
                Stage(f"{scheme}_stage2", scheme, 2, steps - first, images,
                      init_from=f"{scheme}_stage1")]
    return [Stage(scheme, scheme, schemes.default_stage(scheme, 1), steps)]


class Runner:
    """Runs and records the commands of one ablation in OUT."""

    def __init__(self, out: str):
        self.out = os.path.abspath(out)
        os.makedirs(self.out, exist_ok=True)
        self.commands_path = os.path.join(self.out, "commands.txt")
        self.commands = []

    def record(self, program: str, arguments: dict) -> None:
        parts = [program] + [f"--{key}={value}" if not isinstance(value, bool)
                             else (f"--{key}" if value else f"--no{key}")
                             for key, value in arguments.items() if value is not None]
        self.commands.append(" ".join(shlex.quote(part) for part in parts))
        with open(self.commands_path, "w", encoding="utf-8") as file:
            file.write("\n".join(self.commands) + "\n")

    def path(self, *names: str) -> str:
        return os.path.join(self.out, *names)


def train_text_encoder(runner: Runner) -> str:
    from sdn_tf.text.train import TextTrainConfig, train_text_encoder as train_text

    workdir = runner.path("text")
    arguments = dict(workdir=workdir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                     image_size=FLAGS.image_size, teacher_weights=FLAGS.teacher_weights,
                     batch_size=20, learning_rate=1e-3, dropout=0.0, max_steps=FLAGS.text_steps,
                     seed=FLAGS.seed)
    runner.record("sdn-train-text", arguments)
    if not os.path.isfile(os.path.join(workdir, "text_encoder.weights.h5")):
        train_text(TextTrainConfig(**arguments))
    return workdir


def finished_steps(workdir: str) -> int:
    path = os.path.join(workdir, "final.json")
    if not os.path.isfile(path):
        return -1
    with open(path, encoding="utf-8") as file:
        return int(json.load(file).get("step", -1))


_EMBEDDING_CACHE = {}


def _cached_embed_records(config, records):
    """Embed each record list once per text encoder; sdn-train embeds them on every run.

    Embedding shapes' 24,000 training captions took minutes per run on a
    loaded 2-core CPU, more than the short runs themselves.
    """
    key = (config.text_embeddings, config.text_encoder, id(records))
    if key not in _EMBEDDING_CACHE:
        _EMBEDDING_CACHE[key] = (records, _ORIGINAL_EMBED(config, records))
    return _EMBEDDING_CACHE[key][1]


_ORIGINAL_EMBED = None
_SPLITS = {}


def _splits():
    """Load the train and test records once, so the embedding cache sees the same lists."""
    from sdn_tf.data.datasets import load_split

    if not _SPLITS:
        _SPLITS["train"] = load_split(FLAGS.dataset, FLAGS.data_dir, "train")
        _SPLITS["test"] = load_split(FLAGS.dataset, FLAGS.data_dir, "test")
    return _SPLITS["train"], _SPLITS["test"]


def train_stage(runner: Runner, stage: Stage, text_encoder: str) -> dict:
    import keras

    from sdn_tf import train as train_lib
    from sdn_tf.train import SDNConfig, train

    global _ORIGINAL_EMBED
    if _ORIGINAL_EMBED is None:
        _ORIGINAL_EMBED = train_lib.embed_records
        train_lib.embed_records = _cached_embed_records

    workdir = runner.path("runs", stage.name)
    arguments = dict(workdir=workdir, scheme=stage.scheme, stage=stage.stage,
                     dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                     image_size=FLAGS.image_size, teacher_weights=FLAGS.teacher_weights,
                     text_encoder=text_encoder, batch_size=FLAGS.batch_size,
                     learning_rate=FLAGS.learning_rate, max_steps=stage.steps,
                     num_images=stage.num_images, seed=FLAGS.seed,
                     init_from=runner.path("runs", stage.init_from) if stage.init_from else None,
                     init_image_bias=FLAGS.init_image_bias and not stage.init_from,
                     generator_init=FLAGS.generator_init, image_gain=FLAGS.image_gain,
                     normalise_embeddings=FLAGS.normalise_embeddings,
                     tap_weights=FLAGS.tap_weights,
                     log_every=max(stage.steps // 5, 1), checkpoint_every=stage.steps,
                     sample_every=stage.steps)
    runner.record("sdn-train", arguments)
    if finished_steps(workdir) >= stage.steps:
        logging.info("Skipping %s: finished at %d steps.", stage.name, stage.steps)
    else:
        keras.backend.clear_session()
        train_records, test_records = _splits()
        train(SDNConfig(**arguments), train_records, test_records)
    with open(os.path.join(workdir, "final.json"), encoding="utf-8") as file:
        return json.load(file)


def export_and_evaluate(runner: Runner, scheme: str, workdir: str) -> dict:
    import keras

    from sdn_tf.evaluate import EvalConfig, evaluate, read_metrics
    from sdn_tf.export import export

    export_dir = runner.path("exports", scheme)
    runner.record("sdn-export", dict(workdir=workdir, export_dir=export_dir))
    if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        keras.backend.clear_session()
        export(workdir, export_dir)
    eval_dir = runner.path("eval", scheme)
    arguments = dict(model=export_dir, output_dir=eval_dir, dataset=FLAGS.dataset,
                     data_dir=FLAGS.data_dir, max_captions=FLAGS.max_captions,
                     inception_weights=FLAGS.inception_weights,
                     skip=",".join(FLAGS.skip) or None, workers=FLAGS.workers,
                     seed=FLAGS.seed)
    runner.record("sdn-eval", arguments)
    if os.path.isfile(os.path.join(eval_dir, "metrics.json")):
        return read_metrics(eval_dir)
    keras.backend.clear_session()
    return evaluate(EvalConfig(
        model_dir=export_dir, output_dir=eval_dir, dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, max_captions=FLAGS.max_captions,
        inception_weights=FLAGS.inception_weights, skip=tuple(FLAGS.skip),
        workers=FLAGS.workers, seed=FLAGS.seed))


# --- Tables ----------------------------------------------------------------------------


def _value(metric: Optional[dict], key: str):
    if not metric or "skipped" in metric:
        return None
    return metric.get(key)


def summarise(scheme: str, final: dict, results: dict) -> dict:
    """Return the ablation.json row of one scheme."""
    metrics = results["metrics"]
    colour = metrics.get("colour") or {}
    row = {
        "scheme": scheme,
        "title": schemes.SCHEME_TITLES[scheme],
        "paper_cub_is": schemes.PAPER_TABLE_3[scheme],
        "final_loss": (final.get("losses") or {}).get("loss"),
        "final_image_term": (final.get("losses") or {}).get("image"),
        "is_mean": _value(metrics.get("is"), "mean"),
        "is_std": _value(metrics.get("is"), "std"),
        "fid": _value(metrics.get("fid"), "value"),
        "ssim": _value(metrics.get("ssim"), "mean"),
        "fsim": _value(metrics.get("fsim"), "mean"),
        "r_precision": _value(metrics.get("r_precision"), "value"),
        "num_captions": results.get("num_captions"),
    }
    for group in ("all", "seen", "unseen"):
        row[f"colour_{group}"] = _value(colour.get(group) if "skipped" not in colour
                                        else None, "accuracy")
    return row


def _format(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_table(rows: list, settings: dict) -> str:
    """Return ablation.md: one row per scheme, Table 3's CUB Inception score beside it."""
    lines = [
        f"# SDN ablation on {settings['dataset']}",
        "",
        f"{settings['steps']} training steps per scheme at {settings['image_size']}x"
        f"{settings['image_size']}, batch {settings['batch_size']}, learning rate "
        f"{settings['learning_rate']:g}, teacher weights {settings['teacher_weights']}, "
        f"Inception weights {settings['inception_weights']}, "
        f"{rows[0]['num_captions'] if rows else 0} test captions per evaluation.",
        "",
        "| Scheme | Paper IS (CUB) | IS | FID | SSIM | FSIM | R-precision | Colour acc. "
        "(all / seen / unseen) | Final loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        is_cell = ("–" if row["is_mean"] is None
                   else f"{row['is_mean']:.2f} ± {row['is_std']:.2f}")
        colour = " / ".join(_format(row[f"colour_{group}"], 3)
                            for group in ("all", "seen", "unseen"))
        lines.append(
            f"| {row['title']} | {row['paper_cub_is']:.2f} | {is_cell} | "
            f"{_format(row['fid'], 1)} | {_format(row['ssim'], 4)} | "
            f"{_format(row['fsim'], 4)} | {_format(row['r_precision'], 3)} | {colour} | "
            f"{_format(row['final_loss'], 2)} |")
    if settings["inception_weights"] == "random":
        lines += ["", "IS and FID use Inception-v3 with random weights: they compare these "
                  "runs with each other only and are not comparable with the paper's scores."]
    lines += ["", "Paper IS (CUB): Table 3 of Yuan & Peng (ACM MM 2018), 224x224, 100 + 100 "
              "epochs; the losses of different schemes sum different terms, so the final "
              "losses are not comparable across rows."]
    return "\n".join(lines) + "\n"


# --- Figures ---------------------------------------------------------------------------


def draw_figures(runner: Runner, exports: dict, workdirs: dict) -> list:
    """Write the comparison grid, diverse grid and interpolation strip; return their paths."""
    import numpy as np

    from sdn_tf.data.datasets import load_split
    from sdn_tf.data.pipeline import load_images
    from sdn_tf.figures import comparison_grid, diverse_grid
    from sdn_tf.generate import generate_images, load_model
    from sdn_tf.interpolate import write_interpolation

    folder = runner.path("figures")
    os.makedirs(folder, exist_ok=True)
    records = load_split(FLAGS.dataset, FLAGS.data_dir, "test")
    rows = np.unique(np.linspace(0, len(records) - 1, FLAGS.figure_captions).round()
                     .astype(int))
    chosen = [records[i] for i in rows]
    captions = [record.captions[0] for record in chosen]
    real = load_images(chosen, FLAGS.image_size)
    generated = {}
    paths = []
    for scheme, export_dir in exports.items():
        model, _ = load_model(export_dir)
        images = generate_images(model, captions)
        generated[FIGURE_LABELS[scheme]] = images[:, 0]
        if scheme == "diverse":
            path = os.path.join(folder, "diverse.png")
            diverse_grid(captions, images).save(path)
            paths.append(path)
    path = os.path.join(folder, "comparison.png")
    comparison_grid(captions, real, generated).save(path)
    paths.append(path)

    if "sdn" in workdirs:
        if FLAGS.interpolate:
            caption_a, _, caption_b = FLAGS.interpolate.partition("|")
        else:
            first = records[0]
            other = next((r for r in records if r.class_id != first.class_id), records[-1])
            caption_a, caption_b = first.captions[0], other.captions[0]
        path = os.path.join(folder, "interpolation.png")
        write_interpolation(workdirs["sdn"], caption_a.strip(), caption_b.strip(), path)
        paths.append(path)
    return paths


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    unknown = sorted(set(FLAGS.schemes) - set(schemes.SCHEMES))
    if unknown:
        raise app.UsageError(f"--schemes has unknown names {unknown}; use names from "
                             f"{', '.join(schemes.SCHEMES)}.")
    runner = Runner(FLAGS.out)
    text_encoder = FLAGS.text_encoder or train_text_encoder(runner)

    rows, exports, workdirs = [], {}, {}
    for scheme in FLAGS.schemes:
        stages = plan(scheme, FLAGS.steps, FLAGS.num_images)
        final = {}
        for stage in stages:
            final = train_stage(runner, stage, text_encoder)
        workdir = runner.path("runs", stages[-1].name)
        workdirs[scheme] = workdir
        results = export_and_evaluate(runner, scheme, workdir)
        exports[scheme] = runner.path("exports", scheme)
        rows.append(summarise(scheme, final, results))

        settings = dict(dataset=FLAGS.dataset, steps=FLAGS.steps, image_size=FLAGS.image_size,
                        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                        teacher_weights=FLAGS.teacher_weights,
                        inception_weights=FLAGS.inception_weights,
                        num_images=FLAGS.num_images, text_encoder=text_encoder)
        # Written after every scheme, so an interrupted ablation keeps its table.
        with open(runner.path("ablation.json"), "w", encoding="utf-8") as file:
            json.dump({"settings": settings, "rows": rows,
                       "paper_table_3_cub_is": schemes.PAPER_TABLE_3}, file, indent=2)
        with open(runner.path("ablation.md"), "w", encoding="utf-8") as file:
            file.write(format_table(rows, settings))
        logging.info("Scheme %s done; table in %s.", scheme, runner.path("ablation.md"))

    for path in draw_figures(runner, exports, workdirs):
        logging.info("Wrote %s.", path)


if __name__ == "__main__":
    app.run(main)
