"""Shared test setup: offline Hugging Face, the fixtures folder, and small helpers."""

import json
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never reach for the network here

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def read_fixture(name):
    """(arrays dict, meta dict) of tests/fixtures/<name>.npz (official outputs, see its README)."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        return arrays, json.loads(str(data["meta"]))


def official_state_dict(arrays):
    """The fixture's `sd/<official key>` tensors, keyed by the official key."""
    return {k.removeprefix("sd/"): v for k, v in arrays.items() if k.startswith("sd/")}


@pytest.fixture(scope="session")
def load_fixture():
    """load_fixture(name) -> read_fixture(name), for tests that prefer a fixture argument."""
    return read_fixture
