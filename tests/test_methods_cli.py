"""Each real method runs end to end through `ad eval` on the synthetic data set, with random
weights and its small smoke backbone (the same code path as the default weights)."""

from __future__ import annotations

import csv

import pytest

from adcore.plugins.registry import get_registry
from adtest import run_ad

CASES = [
    ("winclip", "0"),
    ("winclip", "2"),
    ("afclip", "0"),
    ("miniclip", "0"),
    ("patchcore", "all"),
    ("anomalydino", "1"),
]


@pytest.mark.parametrize(("method", "k_shot"), CASES)
def test_method_runs_on_synthetic(tmp_path, method, k_shot):
    smoke = get_registry().resolve("method", method).spec.smoke_config
    overrides = [arg for key, value in smoke.items() for arg in ("--set", f"model.{key}={value}")]
    result = run_ad(
        "eval", "--method", method, "--dataset", "synthetic", "--category", "pill",
        "--k-shot", k_shot, "--random-weights", "--output", str(tmp_path / "out"),
        "--set", "evaluation.latency.enabled=false", "--set", "data.num_workers=0",
        "--no-progress", *overrides,
        env={"AD_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Random weights" in result.stdout
    run_dir = tmp_path / "out/synthetic" / method / "default"
    row = next(csv.DictReader((run_dir / "pill/metrics.csv").open()))
    expected_support = {"0": 0, "1": 1, "2": 2, "all": 16}[k_shot]
    assert int(row["num_support"]) == expected_support
    assert 0.0 <= float(row["image_auroc"]) <= 1.0
    assert 0.0 <= float(row["pro"]) <= 1.0


def test_a_refused_run_prints_no_banner_before_its_error(tmp_path):
    """The random-weights banner and the k-shot note come once the run is accepted: a
    category the data set lacks is the only thing said."""
    env = {"AD_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = ["eval", "--method", "patchcore", "--random-weights", "--no-progress",
            "--output", str(tmp_path / "out")]  # fmt: skip
    refused = run_ad(*args, "--category", "nosuch", env=env)
    assert refused.returncode == 1 and "Category nosuch not found" in refused.stderr
    assert refused.stdout == ""  # neither "Random weights" nor "k_shot not given"
