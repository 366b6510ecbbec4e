"""sdn-export: write a finished sdn-train run as a SavedModel.

  sdn-export --workdir=runs/stage2 --export_dir=runs/export
"""

from absl import app, flags

from sdn_tf.export import export
from sdn_tf.cli.errors import run_program

flags.DEFINE_string("workdir", None, "Workdir of a finished sdn-train run.")
flags.DEFINE_string("export_dir", None, "Folder for the SavedModel. An existing folder is "
                    "replaced if it is empty or contains an earlier export, and rejected "
                    "otherwise.")
flags.DEFINE_integer("chunk_size", 32, "Captions per generator call inside the SavedModel.",
                     lower_bound=1)
flags.mark_flags_as_required(["workdir", "export_dir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    export(FLAGS.workdir, FLAGS.export_dir, FLAGS.chunk_size)


def run():
    run_program(main)


if __name__ == "__main__":
    run()
