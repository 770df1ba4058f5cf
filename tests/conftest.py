"""Fixtures shared by every test file, and the ``slow`` marker of the longer tests.

``pytest -m "not slow"`` is the everyday subset; CI runs everything (plain ``pytest``).
The slow tests are those that took 7 s or more each on the 2-core reference machine (with
``--durations``): every method end to end through ``ad eval`` on synthetic data, the
network time-outs, sweeps (Ray included), ``ad train`` runs and the longest CLI runs. They
are listed here, by module or by test (a parametrised case by its full id), so that the
subset is defined in one place.

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

SLOW_MODULES = {"test_methods_cli", "test_weights_cli", "test_sweep_paper"}
SLOW_TESTS = {
    "test_afclip::test_ad_train_runs_miniclip_alternating_phases_then_eval_loads_the_run",
    "test_calibrate::test_calibrated_threshold_is_used_by_predict_export_and_the_runtime",
    "test_calibrate::test_a_threshold_of_another_model_is_refused",
    "test_calibrate::test_runtime_calibrates_and_watches_without_torch",
    "test_contract::test_method_contract[ad-winclip:winclip]",
    "test_data_decoding::test_a_huge_image_is_a_bad_sample_with_the_fix_in_data_check_and_eval",
    "test_data_layouts::test_masks_that_vanish_at_the_input_resolution_are_counted_and_explained",
    "test_datasets_cli::test_a_missing_mask_stops_the_run_or_is_skipped_and_counted",
    "test_every_kind::test_one_eval_runs_the_four_examples_and_the_chosen_reporters",
    "test_export::test_predict_with_the_bundle_gives_the_run_scores",
    "test_musc::test_eval_and_predict_on_the_synthetic_set",
    "test_predict::test_predict_reports_a_normalised_score_beside_the_raw_one",
    "test_report::test_ad_report_over_two_real_runs",
    "test_sweep::test_local_and_ray_executors_give_the_same_metrics",
    "test_sweep::test_ray_retries_a_unit_whose_worker_died",
    "test_sweep::test_a_killed_sweep_reruns_only_the_missing_units",
    "test_sweep::test_sweep_random_weights_flag_reaches_every_run_and_the_table_reads_in_a_log",
    "test_training::test_ad_train_refuses_a_bad_sample_before_training_or_skips_and_names_it",
    "test_transductive::test_eval_and_predict_score_the_whole_set",
    "test_usability::test_rerun_names_kept_categories_and_another_config_names_its_keys",
    "test_weights::test_an_endpoint_that_never_answers_times_out_after_one_retry",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tests; deselect, and remember, the Ray tests where Ray is missing."""
    for item in items:
        module = item.path.stem
        name = item.originalname if isinstance(item, pytest.Function) else item.name
        ids = {f"{module}::{name}", f"{module}::{item.name}"}
        if module in SLOW_MODULES or ids & SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    if importlib.util.find_spec("ray") is not None:
        return
    needing = [item for item in items if item.get_closest_marker("ray")]
    if needing:
        _without_ray.extend(item.nodeid for item in needing)
        config.hook.pytest_deselected(items=needing)
        items[:] = [item for item in items if not item.get_closest_marker("ray")]


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    return write_mvtec_tree(tmp_path / "mvtec")


@pytest.fixture(scope="session")
def runtime_command(tmp_path_factory) -> Path:
    """``ad-runtime`` installed into a venv without torch (once per test session)."""
    return install_runtime(tmp_path_factory.mktemp("runtime") / "venv")


def pytest_terminal_summary(terminalreporter) -> None:
    if _without_ray:
        terminalreporter.write_sep("=", "not run: these tests need Ray", yellow=True)
        for nodeid in _without_ray:
            terminalreporter.write_line(f"  {nodeid}")
        terminalreporter.write_line(
            f"Ray is not installed here. To run them: {RAY_INSTALL}, then pytest -m ray."
        )
