"""Fixtures shared by every test file, and the tests that need real Ray.

Ray is an extra (``pip install -e 'packages/adcore[ray]'``), not part of requirements.txt.
Tests marked ``ray`` start a real Ray cluster; without Ray they cannot run, so they are
deselected and the end of the run says which ones and how to run them: never silently.
The Ray executor's own logic and its message when Ray is missing are tested without Ray
(``tests/test_sweep.py``, against ``tests/fakeray.py``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from adtest import install_runtime, write_mvtec_tree

RAY_INSTALL = "pip install -e 'packages/adcore[ray]'"
_without_ray: list[str] = []


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    return write_mvtec_tree(tmp_path / "mvtec")


@pytest.fixture(scope="session")
def runtime_command(tmp_path_factory) -> Path:
    """``ad-runtime`` installed into a venv without torch (once per test session)."""
    return install_runtime(tmp_path_factory.mktemp("runtime") / "venv")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if importlib.util.find_spec("ray") is not None:
        return
    needing = [item for item in items if item.get_closest_marker("ray")]
    if needing:
        _without_ray.extend(item.nodeid for item in needing)
        config.hook.pytest_deselected(items=needing)
        items[:] = [item for item in items if not item.get_closest_marker("ray")]


def pytest_terminal_summary(terminalreporter) -> None:
    if _without_ray:
        terminalreporter.write_sep("=", "not run: these tests need Ray", yellow=True)
        for nodeid in _without_ray:
            terminalreporter.write_line(f"  {nodeid}")
        terminalreporter.write_line(
            f"Ray is not installed here. To run them: {RAY_INSTALL}, then pytest -m ray."
        )
