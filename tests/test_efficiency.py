"""Efficiency figures of a tiny hand-countable method: parameters, FLOPs, time, memory."""

from __future__ import annotations

import time

import pydantic
import pytest
import torch
from torch import nn

from adcore.efficiency import (
    measure_backbone,
    measure_efficiency,
    method_over_backbone,
)
from adcore.method import FitContext, InputGeometry, Method, Prediction, Runtime

SIZE = 16
SLEEP_S = 0.01
TOUCH_BYTES = 128 * 2**20


class TinyMethod(Method):
    """conv 3->4 (3x3, bias) as backbone, a frozen linear 4->2 head, a 1000x4 memory bank."""

    def __init__(self) -> None:
        self.geometry = InputGeometry(size=SIZE)
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
    from adcore.config import LatencySettings as EfficiencySettings

    settings = EfficiencySettings()
    assert settings.enabled and settings.warmup_iters is None and settings.throughput_batch == 16
    with pytest.raises(pydantic.ValidationError):
        EfficiencySettings(warmup=3)
    with pytest.raises(pydantic.ValidationError):
        EfficiencySettings(measure_iters=0)
