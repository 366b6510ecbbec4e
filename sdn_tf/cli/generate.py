"""sdn-generate: images from captions with a model written by sdn-export.

  sdn-generate --model=runs/export --output_dir=samples \
      --captions="a small bird, red with black wings" --captions="a yellow flower"

Pass --captions once per caption. Commas inside a caption are kept, as in
real CUB and Oxford-102 captions. --captions_file reads one caption per line.
"""

from absl import app, flags, logging

from sdn_tf import generate
from sdn_tf.cli.errors import run_program
from sdn_tf.folders import check_writable_folder

flags.DEFINE_string("model", None, "SavedModel folder written by sdn-export.")
flags.DEFINE_multi_string("captions", [], "One caption, commas included. Repeat the flag "
                          "for more captions: --captions=\"a red bird\" "
                          "--captions=\"a yellow flower\".")
flags.DEFINE_string("captions_file", None, "UTF-8 text file with one caption per line.")
flags.DEFINE_string("output_dir", "generated", "Folder for the PNG files and contact sheet.")
flags.mark_flag_as_required("model")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    if FLAGS.captions and FLAGS.captions_file:
        raise app.UsageError("Pass either --captions or --captions_file, not both.")
    captions = list(FLAGS.captions)
    if FLAGS.captions_file:
        try:
            captions = generate.read_captions_file(FLAGS.captions_file)
        except FileNotFoundError as error:
            raise app.UsageError(str(error)) from None
        if not captions:
            raise app.UsageError(f"--captions_file={FLAGS.captions_file!r} contains no "
                                 "captions; write one caption per line.")
    if not captions:
        raise app.UsageError("No captions given: pass --captions or --captions_file with at "
                             "least one caption.")
    check_writable_folder(FLAGS.output_dir, "--output_dir")
    try:
        model, info = generate.load_model(FLAGS.model)
    except FileNotFoundError as error:
        raise app.UsageError(str(error)) from None
    generate.check_captions(captions, info.get("max_caption_length",
                                               generate.MAX_CAPTION_LENGTH))
    generate.warn_unreadable_captions(captions)
    images = generate.generate_images(model, captions)
    paths = generate.write_outputs(images, captions, FLAGS.output_dir)
    logging.info("Wrote %s and contact_sheet.png to %s.",
                 generate.count_noun(len(paths), "image"), FLAGS.output_dir)


def run():
    run_program(main)


if __name__ == "__main__":
    run()
