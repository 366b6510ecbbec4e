"""Check that an output folder can be written before a program does any heavy work.

Without this check, a program loads its model and only then fails on its
first write with a bare PermissionError. That error names the file it tried,
which may be a hidden temporary folder, instead of the flag the user set.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional


def check_writable_folder(folder: str, flag: str, value: Optional[str] = None) -> None:
    """Raise OSError unless `folder` is a writable folder or can be created.

    `flag` and `value` (default: `folder`) name the setting in the message. When
    `folder` does not exist, the check needs write access to its nearest
    existing parent, where creating it would start. A temporary folder is
    created and removed there, so the check also catches read-only file
    systems and access control lists, and leaves nothing behind.
    """
    value = folder if value is None else value
    folder = os.path.abspath(folder)
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        if existing == folder:
            problem = "is not a folder"
        else:
            problem = f"cannot be created because {existing!r} is not a folder"
        raise NotADirectoryError(f"{flag}={value!r} {problem}. Pass a folder path.")
    try:
        probe = tempfile.mkdtemp(prefix=".write-check-", dir=existing)
    except OSError as error:
        raise type(error)(
            f"{flag}={value!r} is not writable: creating a folder in {existing!r} failed "
            f"({error.strerror or error}). Pass a folder you can write to, or make "
            f"{existing!r} writable.") from error
    os.rmdir(probe)
