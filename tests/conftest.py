"""Shared test settings: quiet TensorFlow logs, the path of the real data, tools/ helpers."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"


def _import_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool():
    """Return a function that imports tools/NAME.py, which is not a package, as a module."""
    return _import_tool


def _run_tool_script(name: str, *args: str, timeout: float = 300):
    # The checkout goes first on PYTHONPATH so that the script imports this
    # tree's sdn_tf even where another copy is installed.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(TOOLS.parent),
                                                        os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(TOOLS / f"{name}.py"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def run_tool():
    """Return a function that runs tools/NAME.py with arguments and returns the finished process."""
    return _run_tool_script


def _write_text_encoder(workdir, embedding_dim: int = 16, seed: int = 0) -> str:
    from sdn_tf.text import encoder as enc

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"kind": enc.WORKDIR_KIND, "alphabet": enc.ALPHABET,
              "max_length": enc.MAX_LENGTH, "embedding_dim": embedding_dim, "rnn": "gru",
              "dropout": 0.0}
    (workdir / "config.json").write_text(json.dumps(config))
    model = enc.build_text_encoder(embedding_dim=embedding_dim, rnn="gru", dropout=0.0,
                                   seed=seed)
    enc.save_text_encoder(model, str(workdir))
    return str(workdir)


@pytest.fixture(scope="session")
def write_text_encoder():
    """Return a function that writes an untrained text encoder workdir and returns its path.

    The workdir looks as a finished sdn-train-text run leaves it: config.json
    and the final weights file. `seed` sets the initial weights.
    """
    return _write_text_encoder


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end tests; deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    path = SHARED_DATA.resolve()
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path}")
    return path
