"""`ad bench` through the entry point: figures, and ratios that follow from them."""

from __future__ import annotations

import json

import pytest

from adtest import run_ad


def test_bench_reports_figures_and_ratios(mvtec_root):
    result = run_ad("bench", "--method", "pixel-gaussian", "--dataset", "mvtec", "--data-root",
                    str(mvtec_root), "--k-shot", "2", "--warmup", "0", "--iters", "3",
                    "--batch", "2", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    method, backbone = report["method_figures"], report["backbone_figures"]
    assert report["support_images"] == 2
    assert method["measure_iters"] == 3 and method["throughput_batch"] == 2
    assert method["params_total"] == 0  # weight-free
    assert method["memory_bank_mb"] == pytest.approx(2 * 3 * 128 * 128 * 4 / 2**20)
    assert report["ratio_time"] == pytest.approx(
        method["latency_ms_median"] / backbone["latency_ms_median"]
    )


def test_bench_refuses_an_unknown_method():
    result = run_ad("bench", "--method", "nosuch")
    assert result.returncode == 2 and "Unknown method 'nosuch'" in result.stderr
