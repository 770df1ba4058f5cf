"""Fixtures shared by every test file."""

from __future__ import annotations

from pathlib import Path

import pytest

from adtest import write_mvtec_tree


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    return write_mvtec_tree(tmp_path / "mvtec")
