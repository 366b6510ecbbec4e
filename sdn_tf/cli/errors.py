"""Turn the errors a user can fix into one message line and exit status 1.

A missing file, a mismatched workdir or a bad value raises an exception whose
message already names the value and the fix. A traceback of 30 to 100 lines in
front of it hides that line, so the programs print the message alone. Set
SDN_TF_TRACEBACK=1 to see the traceback as well, for example when reporting a
bug.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app

TRACEBACK_VARIABLE = "SDN_TF_TRACEBACK"

# Errors whose messages in this package name the value and the fix.
# sdn_tf.workdir.WorkdirError is a ValueError, and RuntimeError covers a teacher
# or Inception download that failed without internet. Nothing here imports
# TensorFlow, so a program can reject a bad flag before loading it.
USER_ERRORS = (ValueError, OSError, RuntimeError)


def with_clear_errors(main: Callable) -> Callable:
    """Wrap an absl `main` so that USER_ERRORS print one line and exit with status 1."""

    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            # absl would print the whole module docstring before the message.
            print(f"{_program()}: error: {error}\nPass --helpfull to list the flags.",
                  file=sys.stderr)
            sys.exit(1)
        except USER_ERRORS as error:
            if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
                raise
            print(f"{_program()}: error: {error}\n(Set {TRACEBACK_VARIABLE}=1 to see the "
                  "traceback.)", file=sys.stderr)
            sys.exit(1)

    wrapped.__doc__ = main.__doc__
    return wrapped


def _program() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv else "sdn_tf"


def run_program(main: Callable) -> None:
    """`app.run(main)` with the errors of `with_clear_errors` printed as one line."""
    app.run(with_clear_errors(main))
