"""Efficiency figures of a tiny hand-countable method: parameters, FLOPs, time, memory."""

from __future__ import annotations

import re
import time

import pydantic
import pytest
import torch
from torch import nn

from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.method import FitContext, Method, Prediction, Runtime
from adcore.run.efficiency import (
    measure_backbone,
    measure_efficiency,
    method_over_backbone,
)

SIZE = 16
SLEEP_S = 0.01
TOUCH_BYTES = 128 * 2**20


class TinyMethod(Method):
    """conv 3->4 (3x3, bias) as backbone, a frozen linear 4->2 head, a 1000x4 memory bank."""

    def __init__(self) -> None:
        self.geometry = Preprocessing(size=SIZE)
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4, 2).requires_grad_(False)
        self.net = nn.Sequential(self.conv, self.head)  # shares conv: counted once
        self.bank = torch.zeros(1000, 4)

    def fit(self, context: FitContext) -> None:
        pass

    def predict(self, images: torch.Tensor) -> Prediction:
        time.sleep(SLEEP_S)  # a known floor for latency and a ceiling for throughput
        scratch = torch.ones(TOUCH_BYTES // 4)  # resident memory the probe must see
        features = self.conv(self.geometry.normalize(images))  # [B,4,S,S]
        logits = self.head(features.mean(dim=(2, 3)))  # [B,2]
        return Prediction(scores=logits[:, 0] + scratch[0], maps=features.mean(dim=1))

    def modules(self) -> dict[str, nn.Module]:
        return {"conv": self.conv, "net": self.net}

    def backbone_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)

    def weights_identity(self) -> dict[str, object]:
        return {"backbone": "tiny", "pretrained": "none", "random": True}

    def memory_bank_bytes(self) -> int:
        return self.bank.numel() * self.bank.element_size()


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_figures_match_hand_counts():
    method = TinyMethod()
    resident_before = resident_mib()
    figures = measure_efficiency(method, Runtime(device="cpu"), warmup_iters=1, measure_iters=4)
    # conv: 4*3*3*3 weights + 4 biases = 112 trainable; linear: 4*2 + 2 = 10 frozen.
    assert figures.params_total == 122
    assert figures.params_trainable == 112
    assert figures.memory_bank_mb == pytest.approx(1000 * 4 * 4 / 2**20)
    # conv: 2 FLOPs per multiply-add, 3*3*3 per output, 4*S*S outputs; linear: 2*4*2.
    conv_flops = 2 * 3 * 3 * 3 * 4 * SIZE * SIZE
    assert figures.gflops == pytest.approx((conv_flops + 2 * 4 * 2) / 1e9)
    assert figures.input_size == SIZE
    assert (figures.warmup_iters, figures.measure_iters, figures.throughput_batch) == (1, 4, 16)

    assert SLEEP_S * 1e3 <= figures.latency_ms_median <= figures.latency_ms_p90 < 5e3
    assert 0 < figures.throughput_ips <= 16 / SLEEP_S
    assert figures.peak_reserved_mb is None
    assert "VmHWM" in figures.peak_memory_source
    numbers = figures.as_numbers()
    assert numbers["params_total"] == 122.0 and "device" not in numbers
    assert "peak_reserved_mb" not in numbers
    assert figures.peak_memory_mb >= resident_before + 0.9 * TOUCH_BYTES / 2**20


def test_backbone_floor_and_ratio():
    method = TinyMethod()
    runtime = Runtime(device="cpu")
    backbone = measure_backbone(method, runtime)
    assert backbone.gflops == pytest.approx(2 * 3 * 3 * 3 * 4 * SIZE * SIZE / 1e9)
    assert (backbone.warmup_iters, backbone.measure_iters) == (2, 5)  # CPU defaults
    assert 0 < backbone.latency_ms_median <= backbone.latency_ms_p90
    figures = measure_efficiency(method, runtime, warmup_iters=0, measure_iters=2)
    ratio = method_over_backbone(figures, backbone)
    assert ratio["gflops"] == pytest.approx(1 + 16 / (2 * 3 * 3 * 3 * 4 * SIZE * SIZE))
    assert ratio["latency"] == pytest.approx(figures.latency_ms_median / backbone.latency_ms_median)
    assert ratio["latency"] > 1  # the method sleeps 10 ms on top of the conv


def test_settings_forbid_unknown_keys():
    from adcore.config.sections import LatencySettings as EfficiencySettings

    settings = EfficiencySettings()
    assert settings.enabled and settings.warmup_iters is None and settings.throughput_batch == 16
    with pytest.raises(pydantic.ValidationError):
        EfficiencySettings(warmup=3)
    with pytest.raises(pydantic.ValidationError):
        EfficiencySettings(measure_iters=0)


class PerImageMethod(TinyMethod):
    """Sleeps ``PER_IMAGE_S`` per image: each predict call takes at least that times B."""

    calls: list[int]

    def predict(self, images: torch.Tensor) -> Prediction:
        self.calls.append(len(images))
        time.sleep(PER_IMAGE_S * len(images))
        features = self.conv(self.geometry.normalize(images))  # [B,4,S,S]
        return Prediction(scores=features.mean(dim=(1, 2, 3)), maps=features.mean(dim=1))


PER_IMAGE_S = 0.005


def test_prediction_pass_times_each_predict_call(tmp_path):
    """Ten images at batch 4: calls of 4, 4, 2, each timed at no less than its sleep."""
    import numpy as np
    from PIL import Image

    from adcore.contracts.dataset import Sample
    from adcore.run.prediction_pass import run_prediction_pass

    samples = []
    for index in range(10):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((20, 24, 3), index * 20, np.uint8)).save(path)
        samples.append(Sample(image_path=path, label=index % 2, category="c"))
    method = PerImageMethod()
    method.calls = []
    predicted = run_prediction_pass(method, Runtime(), samples, 4, 0, "tiny")
    assert method.calls == [4, 4, 2] and predicted.batch_sizes.tolist() == [4, 4, 2]
    assert (predicted.batch_seconds >= PER_IMAGE_S * predicted.batch_sizes).all()
    assert predicted.predict_seconds == pytest.approx(float(predicted.batch_seconds.sum()))
    assert predicted.maps.shape == (10, SIZE, SIZE) and predicted.scores.shape == (10,)


def test_evaluation_figures_from_the_pass_and_a_budgeted_probe():
    """Throughput and per-image time are hand-computable from the batches given; the probe
    stops at its budget but never below ``min_iters``; ``measure_iters`` is exact."""
    import numpy as np

    from adcore.config.sections import LatencySettings
    from adcore.outputs.results import EFFICIENCY_COLUMNS
    from adcore.run.efficiency import count_cost, evaluation_figures, probe_latency

    method = PerImageMethod()
    method.calls = []
    runtime = Runtime()
    cost = count_cost(method, runtime)
    assert cost.params_total == 3 * 4 * 9 + 4 + 4 * 2 + 2
    sizes, seconds = np.array([4, 4, 2]), np.array([0.4, 0.8, 0.1])
    settings = LatencySettings(budget_fraction=0.05, min_iters=3, warmup_iters=0)
    method.calls.clear()
    figures = evaluation_figures(method, runtime, settings, sizes, seconds, 123.0, cost)
    assert list(figures) == list(EFFICIENCY_COLUMNS)
    assert figures["throughput_ips"] == pytest.approx(10 / 1.3)
    assert figures["batch_ms_per_image"] == pytest.approx(100.0)  # median of 100, 200, 50
    assert figures["peak_memory_mb"] == 123.0 and figures["gflops"] == cost.gflops
    # budget 0.05 * 1.3 s = 65 ms, each call sleeps at least 5 ms: 3 (minimum) to 13 calls
    assert 3 <= figures["latency_probe_iters"] == len(method.calls) <= 13
    assert set(method.calls) == {1}
    assert figures["latency_ms_median"] >= PER_IMAGE_S * 1e3
    assert len(probe_latency(method, runtime, 0.0, min_iters=3, warmup_iters=0)) == 3
    assert len(probe_latency(method, runtime, 0.0, 3, warmup_iters=0, measure_iters=7)) == 7
    # the pass's one-image calls are batch-1 calls already made: they count, and cost nothing
    method.calls.clear()
    reused = probe_latency(method, runtime, 0.0, min_iters=2, warmup_iters=0, timed=[0.5, 0.7])
    assert reused.tolist() == [0.5, 0.7] and method.calls == []
    topped_up = probe_latency(method, runtime, 0.0, min_iters=3, warmup_iters=0, timed=[0.5])
    assert len(topped_up) == 3 and topped_up[0] == 0.5 and method.calls == [1, 1]
    method.calls.clear()
    sizes, seconds = np.array([4, 4, 1]), np.array([0.4, 0.8, 0.3])
    one = LatencySettings(budget_fraction=0.05, min_iters=1, warmup_iters=0)
    figures = evaluation_figures(method, runtime, one, sizes, seconds, 123.0, cost)
    assert figures["latency_ms_median"] == pytest.approx(300.0) and method.calls == []


def test_eval_counts_size_and_flops_once_and_says_how(mvtec_root, tmp_path, monkeypatch):
    """Two categories, one FLOP count; env.json names the source of every figure."""
    import csv
    import json

    import adcore.run.efficiency as efficiency
    from adcore.config.files import build_raw_config
    from adcore.config.problems import validate_base
    from adcore.config.resolve import resolve
    from adcore.outputs.results import EFFICIENCY_COLUMNS
    from adcore.plugins.registry import get_registry
    from adcore.run.runner import Evaluation, RunOptions

    counted = []
    original = efficiency.count_cost
    monkeypatch.setattr(efficiency, "count_cost", lambda *a: counted.append(1) or original(*a))
    raw = build_raw_config(None, assignments=[
        "model.name=pixel-gaussian", "model.resolution=32", "data.dataset=mvtec",
        f"data.root={mvtec_root}", "data.k_shot=3", "data.num_workers=0",
        f"experiment.output_root={tmp_path}",
    ])  # fmt: skip
    config = resolve(validate_base(raw), get_registry())
    run = Evaluation(config, get_registry(), RunOptions(show_progress=False)).run()
    assert len(run.categories) == 2 and counted == [1]
    env = json.loads((run.run_dir / "env.json").read_text())
    assert set(env["efficiency_sources"]) == set(EFFICIENCY_COLUMNS)
    with (run.run_dir / "widget/metrics.csv").open() as stream:
        row = next(csv.DictReader(stream))
    assert float(row["latency_probe_iters"]) >= 1
    assert float(row["throughput_ips"]) > 0 and float(row["efficiency_seconds"]) > 0


def test_eval_shows_the_efficiency_step_in_a_log(mvtec_root, tmp_path):
    from adtest import eval_args, run_ad

    flags = ["--no-progress", "--set", "model.resolution=32", "--set", "data.num_workers=0"]
    result = run_ad(*eval_args(mvtec_root, tmp_path / "out"), *flags[1:])
    assert result.returncode == 0, result.stderr
    for category in ("plate", "widget"):
        assert f"{category}: efficiency: started" in result.stderr
        assert re.search(rf"{category}: efficiency: finished, \d+ done", result.stderr)
        assert re.search(rf"{category}: efficiency: \d+ batch-1 call\(s\), median", result.stderr)


def test_median_interval_is_the_order_statistics_of_the_binomial():
    """Against a hand computation with math.comb: the widest-inner pair of order statistics
    whose coverage 1 - 2 P(Bin(n, 1/2) <= j - 1) reaches 75 %."""
    import math

    import numpy as np

    from adcore.run.efficiency import MEDIAN_CONFIDENCE, median_interval, median_spread

    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 7, 20, 51):
        times = rng.uniform(1.0, 2.0, n)
        ordered = sorted(times)
        cdf = [sum(math.comb(n, i) for i in range(k + 1)) / 2**n for k in range(n)]
        ranks = [j for j in range(1, n // 2 + 1) if 1 - 2 * cdf[j - 1] >= MEDIAN_CONFIDENCE]
        expected = (ordered[ranks[-1] - 1], ordered[n - ranks[-1]]) if ranks else None
        if expected is None:
            assert median_interval(times) == (-math.inf, math.inf) and n < 3
        else:
            assert median_interval(times) == expected
    assert median_interval(np.array([3.0, 1.0, 2.0])) == (1.0, 3.0)  # 3 calls: min..max
    assert median_spread(np.array([1.0, 1.02, 0.98])) == pytest.approx(0.02)


def test_the_probe_stops_when_the_median_is_stable_or_the_budget_is_spent():
    from adcore.run.efficiency import _probe_done

    stable = [1.0, 1.01, 0.99]
    assert _probe_done(stable, budget=100.0, min_iters=3, most=50)  # ±1 %: enough
    assert not _probe_done(stable[:2], budget=100.0, min_iters=3, most=50)
    noisy = [1.0, 1.5, 0.6, 1.2]
    assert not _probe_done(noisy, budget=100.0, min_iters=3, most=50)
    assert _probe_done(noisy, budget=4.0, min_iters=3, most=50)  # 4.3 s + median > 4 s
    assert _probe_done(noisy, budget=100.0, min_iters=3, most=4)


def test_plain_progress_says_when_every_step_finished():
    """Outside a terminal: a step without a total (the efficiency probe) or with nothing to
    do (a zero-shot fit) still gets its finished line; a completed one is not repeated."""
    import io

    from rich.console import Console

    from adcore.infra.progress import Progress

    stream = io.StringIO()
    progress = Progress(console=Console(file=stream, force_terminal=False), interval=1e9)
    with progress:
        with progress.task("pill: fit", total=0):
            pass
        with progress.task("pill: efficiency", total=None) as advance:
            advance(1, status="median 5 ms ± ?")
            advance(1, status="median 5 ms ± 2 %")
        with progress.task("pill: predict", total=2) as advance:
            advance(2)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "pill: fit: started"
    assert lines[1].startswith("pill: fit: finished, 0 done, ")
    assert lines[2] == "pill: efficiency: started"
    assert lines[3].startswith("pill: efficiency: finished, 2 done, ")
    assert lines[3].endswith(", median 5 ms ± 2 %")
    assert lines[5].startswith("pill: predict: 2/2 (100%), ") and len(lines) == 6


def test_fused_attention_on_the_cpu_is_counted():
    """PyTorch's counter has no formula for the CPU's fused attention kernel: QK^T and AV,
    2 x B*H*L*L*d multiply-adds, 2 FLOPs each, must be counted."""
    import torch
    import torch.nn.functional as F

    from adcore.run.efficiency import count_gflops

    batch, heads, length, dim = 2, 3, 50, 16
    q = torch.randn(batch, heads, length, dim)
    expected = 2 * 2 * batch * heads * length * length * dim / 1e9
    assert count_gflops(lambda: F.scaled_dot_product_attention(q, q, q)) == expected
