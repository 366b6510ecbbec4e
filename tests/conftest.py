"""Shared test settings: quiet TensorFlow logs and the path of the real data."""

import importlib.util
import os
import pathlib

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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end tests; deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    path = SHARED_DATA.resolve()
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path}")
    return path
