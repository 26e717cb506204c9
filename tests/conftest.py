"""Shared test setup: offline Hugging Face, the fixtures folder, and small helpers."""

import json
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never reach for the network here

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def load_fixture():
    """load_fixture(name) -> (arrays dict, meta dict) of tests/fixtures/<name>.npz."""

    def load(name):
        with np.load(FIXTURES / f"{name}.npz") as data:
            arrays = {k: data[k] for k in data.files if k != "meta"}
            return arrays, json.loads(str(data["meta"]))

    return load
