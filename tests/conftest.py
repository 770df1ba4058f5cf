"""Fixtures shared by every test file, and the ``slow`` marker of the longer tests.

``pytest -m "not slow"`` is the everyday subset; CI runs everything (plain ``pytest``).
A test is slow when it runs a whole pipeline on real-sized random models or starts other
processes: the parity suites against the authors' code, sweeps (Ray included), training
and the bf16 comparisons. They are listed here, by module or by test, so that the subset
is defined in one place.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adtest import write_mvtec_tree

SLOW_MODULES = {
    "test_afclip_parity",
    "test_winclip_parity",
    "test_patchcore_fidelity",
    "test_anomalydino_parity",
    "test_sweep_paper",
    "test_training",
}
SLOW_TESTS = {
    "test_sweep::test_local_and_ray_executors_give_the_same_metrics",
    "test_sweep::test_ray_retries_a_unit_whose_worker_died",
    "test_sweep::test_a_killed_sweep_reruns_only_the_missing_units",
    "test_sweep::test_sweep_random_weights_flag_reaches_every_run_and_the_table_reads_in_a_log",
    "test_precision::test_bf16_maps_stay_close_to_fp32",
    "test_precision::test_bf16_runs_the_backbone_in_bf16_and_returns_fp32",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        name = item.originalname if isinstance(item, pytest.Function) else item.name
        if module in SLOW_MODULES or f"{module}::{name}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    return write_mvtec_tree(tmp_path / "mvtec")
