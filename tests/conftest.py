"""Shared test settings: quiet TensorFlow logs and the path of the real data."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end tests; deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    path = SHARED_DATA.resolve()
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path}")
    return path
