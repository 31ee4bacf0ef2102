"""Shared fixtures: the embedded model is loaded once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded():
    from longrope_search.defaults import EMBEDDED_MODEL
    from longrope_search.model import load_model

    return load_model(EMBEDDED_MODEL, dtype="float32", device="cpu")
