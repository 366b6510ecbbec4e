"""Output folder checks of sdn-generate, sdn-export, sdn-eval and the colour check.

The programs must reject an unwritable output folder before loading a model.
These runs pass a --model or --workdir that does not exist, so they pass
only if the folder error comes first.
"""

import errno
import os
import subprocess
import sys
import tempfile

import pytest

from sdn_tf.folders import check_writable_folder

running_as_root = hasattr(os, "geteuid") and os.geteuid() == 0


def run_program(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=600)


def test_writable_folder_accepts_new_path(tmp_path):
    check_writable_folder(str(tmp_path / "new" / "deeper"), "--output_dir")
    assert os.listdir(tmp_path) == []


def test_writable_folder_rejects_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(NotADirectoryError) as raised:
        check_writable_folder(str(path), "--output_dir")
    assert f"--output_dir={str(path)!r} is not a folder" in str(raised.value)


def test_writable_folder_rejects_path_under_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(NotADirectoryError) as raised:
        check_writable_folder(str(path / "out"), "--output_dir")
    assert f"cannot be created because {str(path)!r} is not a folder" in str(raised.value)


@pytest.mark.skipif(running_as_root, reason="root may write to read-only folders")
def test_writable_folder_rejects_read_only(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    with pytest.raises(PermissionError) as raised:
        check_writable_folder(str(folder / "out"), "--output_dir")
    assert f"creating a folder in {str(folder)!r} failed" in str(raised.value)


def test_writable_folder_names_flag_on_denial(tmp_path, monkeypatch):
    # Stands in for a read-only folder where the tests run as root, which
    # may write anywhere.
    def denied(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs["dir"])

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(PermissionError) as raised:
        check_writable_folder(str(tmp_path / "out"), "--output_dir", "out")
    message = str(raised.value)
    assert message.startswith("--output_dir='out' is not writable")
    assert f"creating a folder in {str(tmp_path)!r} failed (Permission denied)" in message
    assert f"or make {str(tmp_path)!r} writable." in message


@pytest.fixture
def blocking_file(tmp_path):
    """Return a regular file that no output folder can be created under."""
    path = tmp_path / "blocking_file"
    path.write_text("x", encoding="utf-8")
    return path


@pytest.mark.parametrize("module, extra", [
    ("sdn_tf.cli.generate", ["--captions=a red bird"]),
    ("sdn_tf.cli.colour_check", []),
    ("sdn_tf.cli.evaluate", ["--skip=is,fid"]),
])
def test_output_dir_checked_first(tmp_path, blocking_file, module, extra):
    output_dir = blocking_file / "out"
    result = run_program(module, f"--model={tmp_path / 'missing'}", *extra,
                         f"--output_dir={output_dir}")
    assert result.returncode == 1
    assert f"error: --output_dir={str(output_dir)!r} cannot be created" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_names_export_dir_not_temporary(tmp_path, blocking_file):
    export_dir = blocking_file / "export"
    result = run_program("sdn_tf.cli.export", f"--workdir={tmp_path / 'missing'}",
                         f"--export_dir={export_dir}")
    assert result.returncode == 1
    assert f"error: --export_dir={str(export_dir)!r} cannot be created" in result.stderr
    assert ".export-" not in result.stderr


def test_export_keeps_folder_without_savedmodel(tmp_path):
    from sdn_tf.export import check_export_dir

    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError) as raised:
        check_export_dir(str(tmp_path))
    assert f"--export_dir={str(tmp_path)!r} is a folder that contains no SavedModel" in str(
        raised.value)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_export_accepts_empty_or_earlier_export(tmp_path):
    from sdn_tf.export import check_export_dir

    empty = tmp_path / "empty"
    empty.mkdir()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "saved_model.pb").write_bytes(b"")
    check_export_dir(str(empty))
    check_export_dir(str(earlier))
    check_export_dir(str(tmp_path / "new"))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_export_staging_folder_follows_umask(tmp_path, umask):
    from sdn_tf.export import create_staging_folder

    previous = os.umask(umask)
    try:
        staging = create_staging_folder(str(tmp_path))
    finally:
        os.umask(previous)
    assert os.path.basename(staging).startswith(".export-")
    assert os.stat(staging).st_mode & 0o777 == 0o777 & ~umask
