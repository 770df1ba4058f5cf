"""Fixtures shared by every test file."""

from __future__ import annotations

from pathlib import Path

import pytest

from adtest import install_runtime, write_mvtec_tree


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    return write_mvtec_tree(tmp_path / "mvtec")


@pytest.fixture(scope="session")
def runtime_command(tmp_path_factory) -> Path:
    """``ad-runtime`` installed into a venv without torch (once per test session)."""
    return install_runtime(tmp_path_factory.mktemp("runtime") / "venv")
