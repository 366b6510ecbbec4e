"""The programs print a fixable error as one line, and the traceback only on request."""

import subprocess
import sys

import pytest

from sdn_tf.cli import errors
from sdn_tf.workdir import WorkdirError


def failing_main(error):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("error", [
    WorkdirError("Workdir 'runs/a' was started with stage=1"),
    ValueError("--image_size=100 is not supported"),
    FileNotFoundError("Teacher weights file 'w.h5' not found"),
    RuntimeError("Could not download the ImageNet VGG19 weights"),
])
def test_user_error_prints_one_line(monkeypatch, capsys, error):
    monkeypatch.delenv(errors.TRACEBACK_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as exited:
        errors.with_clear_errors(failing_main(error))(["program"])
    assert exited.value.code == 1
    printed = capsys.readouterr().err
    assert f"error: {error}" in printed
    assert "Traceback" not in printed
    assert errors.TRACEBACK_VARIABLE in printed


def test_traceback_variable_reraises(monkeypatch):
    monkeypatch.setenv(errors.TRACEBACK_VARIABLE, "1")
    with pytest.raises(ValueError, match="bad value"):
        errors.with_clear_errors(failing_main(ValueError("bad value")))(["program"])


def test_other_errors_keep_traceback(monkeypatch):
    monkeypatch.delenv(errors.TRACEBACK_VARIABLE, raising=False)
    with pytest.raises(KeyError):
        errors.with_clear_errors(failing_main(KeyError("bug")))(["program"])


def run_module(module, *flags):
    """Run `python -m module flags...` and return the completed process."""
    return subprocess.run([sys.executable, "-m", module, *flags], capture_output=True,
                          text=True, timeout=300)


def test_export_missing_workdir_one_line(tmp_path):
    result = run_module("sdn_tf.cli.export", f"--workdir={tmp_path / 'nope'}",
                        f"--export_dir={tmp_path / 'export'}")
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert str(tmp_path / "nope") in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_error_one_line_no_banner(monkeypatch, capsys):
    from absl import app

    monkeypatch.delenv(errors.TRACEBACK_VARIABLE, raising=False)
    message = "Pass either --captions or --captions_file, not both."
    with pytest.raises(SystemExit) as exited:
        errors.with_clear_errors(failing_main(app.UsageError(message)))(["program"])
    assert exited.value.code == 1
    printed = capsys.readouterr().err
    assert f"error: {message}" in printed
    assert "--helpfull" in printed
    assert "USAGE" not in printed


def test_generate_without_captions_one_line(tmp_path):
    result = run_module("sdn_tf.cli.generate", f"--model={tmp_path}",
                        f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert "error: No captions given" in result.stderr
    assert "USAGE" not in result.stderr
