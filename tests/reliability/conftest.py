"""Fixtures for the reliability tests: a synthetic model that loads through the real runtime."""

from __future__ import annotations

import pytest

from .synthetic_model import build_synthetic_model


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory):
    """A fast, deterministic model directory (see synthetic_model.py)."""
    pytest.importorskip("onnx")
    return build_synthetic_model(tmp_path_factory.mktemp("models") / "synthetic")


@pytest.fixture(scope="session")
def slow_synthetic_model(tmp_path_factory):
    """The same model with a real matrix product per denoise step (steps cost milliseconds)."""
    pytest.importorskip("onnx")
    return build_synthetic_model(tmp_path_factory.mktemp("models") / "synthetic-slow", work=384)
