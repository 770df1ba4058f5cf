"""Efficiency figures of a fitted method: latency, throughput, peak memory, size and FLOPs.

Two ways to obtain them. ``ad eval`` takes them from the evaluation itself
(:func:`evaluation_figures`): throughput and per-image time from the prediction pass's own
timed batches, a batch-1 latency probe within a small time budget, and parameters and FLOPs
counted once per method (:class:`MethodCost`); ``EVALUATION_SOURCES`` says how each was
obtained. ``ad bench`` runs the full, configurable probe (:func:`measure_efficiency`).

Conventions, so numbers compare across methods and papers:

- Latency is the wall time of one ``predict`` on a batch of 1 (median and 90th percentile
  over the timed iterations, after warm-up, with device synchronisation before and after
  each call); throughput is images per second at ``throughput_batch``.
- Inputs are synthetic uint8 images [b,3,S,S] at the method's ``geometry.output_size`` on
  the run's device, run under ``torch.no_grad()`` and ``runtime.autocast()`` like evaluation.
- Memory is in MiB (2**20 bytes). On CUDA: ``max_memory_allocated`` and
  ``max_memory_reserved`` during the probe. On CPU: the process's peak resident set during
  the probe (VmHWM after a reset through /proc/self/clear_refs); where that reset is not
  possible, the lifetime peak (``ru_maxrss``), as ``peak_memory_source`` says.
- GFLOPs of one batch-1 forward as counted by ``torch.utils.flop_counter.FlopCounterMode``:
  a multiply-add counts as 2 FLOPs, and only matrix products, convolutions and attention
  are counted (elementwise work and non-torch code such as a faiss search are not).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from adcore.infra.device import synchronizer
from adcore.outputs.results import EFFICIENCY_COLUMNS

if TYPE_CHECKING:
    import torch

    from adcore.config.sections import LatencySettings
    from adcore.contracts.method import Method, Runtime

MIB = 2**20
# how ``ad eval`` obtains each figure (written to env.json as ``efficiency_sources``)
EVALUATION_SOURCES = {
    "latency_ms_median": "batch-1 probe after the prediction pass: median of device-"
    "synchronised predict calls, the pass's own one-image calls (a last batch of one) "
    "first, then calls on synthetic images, at least min_iters, then until the "
    "median is known to within 5 % (a distribution-free 75 % interval of the median from "
    "order statistics) or evaluation.latency.budget_fraction of the category's predict time "
    "is spent (measure_iters exactly when set), after warmup_iters (default: none on the "
    "CPU, where the prediction pass has just run the method; 10 on CUDA)",
    "latency_ms_p90": "the same batch-1 probe, 90th percentile",
    "batch_ms_per_image": "prediction pass: median over its data.batch_size predict calls of "
    "the device-synchronised call time divided by the call's images",
    "throughput_ips": "prediction pass: test images / summed device-synchronised time of its "
    "predict calls at data.batch_size (decoding in loader workers not included)",
    "peak_memory_mb": "peak during the prediction pass (CUDA max_memory_allocated, or the "
    "process's peak resident set on the CPU)",
    "params_total": "counted once per method over method.modules()",
    "memory_bank_mb": "method.memory_bank_bytes() after fitting the category",
    "gflops": "counted once per method: one batch-1 predict under FlopCounterMode",
    "latency_probe_iters": "batch-1 calls the latency figures are made of (the pass's "
    "one-image calls included)",
    "efficiency_seconds": "wall time spent on the figures beyond the prediction pass: the "
    "parameter and FLOP count (first category only), the batch-1 probe and its warm-up",
}


class EfficiencyFigures(BaseModel):
    """What ``measure_efficiency`` found for one method on one device."""

    device: str
    input_size: int
    latency_ms_median: float
    latency_ms_p90: float
    throughput_ips: float
    peak_memory_mb: float
    peak_reserved_mb: float | None = None
    peak_memory_source: str
    params_total: int
    params_trainable: int
    memory_bank_mb: float
    gflops: float
    warmup_iters: int
    measure_iters: int
    latency_batch: int = 1
    throughput_batch: int
    throughput_iters: int

    def as_numbers(self) -> dict[str, float]:
        """The numeric figures only (no device or source text, no missing values), for CSVs."""
        return {
            name: float(value)
            for name, value in self.model_dump().items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }


class BackboneFigures(BaseModel):
    """A bare backbone forward at the method's input size: the floor for time and FLOPs."""

    device: str
    input_size: int
    latency_ms_median: float
    latency_ms_p90: float
    gflops: float
    warmup_iters: int
    measure_iters: int


def default_iters(device: str) -> tuple[int, int]:
    """(warm-up, timed) iterations: a few on CPU, hundreds on an accelerator."""
    return (50, 200) if device.startswith("cuda") else (2, 5)


def synthetic_images(batch: int, size: int, device: str, seed: int = 0) -> torch.Tensor:
    """Seeded uint8 images [B,3,S,S] on ``device``, as the host's loader delivers them."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    return images.to(device)


def time_calls(call: Callable[[], Any], device: str, warmup: int, iters: int) -> np.ndarray:
    """Seconds per call [iters], each bracketed by device synchronisation, after warm-up."""
    sync = synchronizer(device)
    for _ in range(warmup):
        call()
    times = np.empty(iters)
    for index in range(iters):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times[index] = time.perf_counter() - start
    return times


def _attention_flops(
    query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any
) -> int:
    """FLOPs of fused attention on [B, H, L, d] shapes (PyTorch's formula for the others)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_gflops(call: Callable[[], Any]) -> float:
    """GFLOPs of one call, multiply-add = 2 FLOPs (FlopCounterMode's convention).

    PyTorch's fused ``nn.MultiheadAttention`` fast path hides its projections from the
    counter, so it is switched off while counting: every ViT is counted whole. The CPU's
    fused attention kernel (``scaled_dot_product_attention`` on a CPU tensor) has no formula
    in PyTorch's counter, so it gets the one of the other fused kernels (QK^T and AV).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(
            display=False, custom_mapping={cpu_attention: _attention_flops}
        ) as counter:
            call()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return counter.get_total_flops() / 1e9


def count_parameters(method: Method) -> tuple[int, int]:
    """(total, trainable) parameters over ``method.modules()``, shared ones counted once."""
    unique = {}
    for module in method.modules().values():
        for parameter in module.parameters():
            unique[id(parameter)] = parameter
    total = sum(parameter.numel() for parameter in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    return total, trainable


class PeakMemory:
    """Peak memory between ``__enter__`` and ``read()``: CUDA allocator, else resident set."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.source = ""

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "cuda max_memory_allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self.source = "cpu peak resident set during the probe (VmHWM)"
        except OSError:
            self.source = "cpu peak resident set over the process lifetime (ru_maxrss)"
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self) -> tuple[float, float | None]:
        """(peak MiB, reserved MiB or None)."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            return (
                torch.cuda.max_memory_allocated(self.device) / MIB,
                torch.cuda.max_memory_reserved(self.device) / MIB,
            )
        if "VmHWM" in self.source:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024 / MIB, None
        import resource

        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (max_rss if sys.platform == "darwin" else max_rss * 1024) / MIB, None


def _resolve_iters(runtime: Runtime, warmup: int | None, measure: int | None) -> tuple[int, int]:
    default_warmup, default_measure = default_iters(runtime.device)
    return (
        default_warmup if warmup is None else warmup,
        default_measure if measure is None else measure,
    )


def measure_efficiency(
    method: Method,
    runtime: Runtime,
    warmup_iters: int | None = None,
    measure_iters: int | None = None,
    throughput_batch: int = 16,
) -> EfficiencyFigures:
    """Probe a fitted method with synthetic images at its own input size."""
    import torch

    warmup, iters = _resolve_iters(runtime, warmup_iters, measure_iters)
    size, per_call = method.geometry.output_size, probe_set_size(method)
    single = synthetic_images(per_call, size, runtime.device)  # [k,3,S,S] uint8, k = 1 mostly
    batch = synthetic_images(throughput_batch, size, runtime.device, seed=1)  # [b,3,S,S]
    throughput_iters = max(1, iters // 4)
    with torch.no_grad(), runtime.autocast(), PeakMemory(runtime.device) as memory:
        call = time_calls(lambda: method.predict(single), runtime.device, warmup, iters)
        latency = call / per_call
        batch_times = time_calls(
            lambda: method.predict(batch), runtime.device, max(1, warmup // 5), throughput_iters
        )
        peak, reserved = memory.read()
        gflops = count_gflops(lambda: method.predict(single)) / per_call
    total, trainable = count_parameters(method)
    return EfficiencyFigures(
        device=runtime.device,
        input_size=size,
        latency_ms_median=float(np.median(latency) * 1e3),
        latency_ms_p90=float(np.percentile(latency, 90) * 1e3),
        throughput_ips=throughput_batch * throughput_iters / float(batch_times.sum()),
        peak_memory_mb=peak,
        peak_reserved_mb=reserved,
        peak_memory_source=memory.source,
        params_total=total,
        params_trainable=trainable,
        memory_bank_mb=method.memory_bank_bytes() / MIB,
        gflops=gflops,
        warmup_iters=warmup,
        measure_iters=iters,
        throughput_batch=throughput_batch,
        throughput_iters=throughput_iters,
    )


def measure_backbone(
    method: Method,
    runtime: Runtime,
    warmup_iters: int | None = None,
    measure_iters: int | None = None,
) -> BackboneFigures:
    """Time ``method.backbone_forward`` on normalised batch-1 images at the same size."""
    import torch

    warmup, iters = _resolve_iters(runtime, warmup_iters, measure_iters)
    size = method.geometry.output_size
    images = method.geometry.normalize(synthetic_images(1, size, runtime.device))  # [1,3,S,S]
    with torch.no_grad(), runtime.autocast():
        latency = time_calls(lambda: method.backbone_forward(images), runtime.device, warmup, iters)
        gflops = count_gflops(lambda: method.backbone_forward(images))
    return BackboneFigures(
        device=runtime.device,
        input_size=size,
        latency_ms_median=float(np.median(latency) * 1e3),
        latency_ms_p90=float(np.percentile(latency, 90) * 1e3),
        gflops=gflops,
        warmup_iters=warmup,
        measure_iters=iters,
    )


def method_over_backbone(method: EfficiencyFigures, backbone: BackboneFigures) -> dict[str, float]:
    """Median latency and GFLOPs of the method relative to its bare backbone (>= 1 ideally)."""
    return {
        "latency": method.latency_ms_median / backbone.latency_ms_median,
        "gflops": method.gflops / backbone.gflops if backbone.gflops > 0 else float("nan"),
    }


class MethodCost(BaseModel):
    """Size and FLOPs of a method: the same for every category, so counted once."""

    params_total: int
    params_trainable: int
    gflops: float


def count_cost(method: Method, runtime: Runtime) -> MethodCost:
    """Parameters and the GFLOPs of one batch-1 ``predict`` on synthetic images."""
    import torch

    per_call = probe_set_size(method)
    images = synthetic_images(per_call, method.geometry.output_size, runtime.device)  # [k,3,S,S]
    with torch.no_grad(), runtime.autocast():
        gflops = count_gflops(lambda: method.predict(images)) / per_call
    total, trainable = count_parameters(method)
    return MethodCost(params_total=total, params_trainable=trainable, gflops=gflops)


TRANSDUCTIVE_PROBE_SET = 8  # images per timed call of a transductive method


def probe_set_size(method: Method) -> int:
    """Images per timed probe call: 1, or a set of :data:`TRANSDUCTIVE_PROBE_SET` for a
    method that scores a set jointly (its latency is then per image within that set)."""
    from adcore.contracts.method import TransductiveMethod

    return TRANSDUCTIVE_PROBE_SET if isinstance(method, TransductiveMethod) else 1


def probe_iters(device: str) -> tuple[int, int]:
    """(warm-up, most timed) iterations of ``ad eval``'s batch-1 probe, by device.

    The prediction pass has just run the method, so the CPU needs no warm-up; CUDA gets a
    few calls to settle kernels and clocks at the new batch size.
    """
    return (10, 200) if device.startswith("cuda") else (0, 50)


STABLE_WITHIN = 0.05  # the probe stops once the median is known to within ±5 %
MEDIAN_CONFIDENCE = 0.75  # coverage of the median's interval (3 calls give min..max)


def median_interval(times: np.ndarray) -> tuple[float, float]:
    """Distribution-free interval of the median of ``times`` [n]: order statistics
    ``[x_(j), x_(n+1-j)]`` with the largest ``j`` whose coverage ``1 - 2 P(Bin(n, 1/2) < j)``
    is at least :data:`MEDIAN_CONFIDENCE`; ``(-inf, inf)`` while ``n`` is too small (< 3)."""
    n = len(times)
    ranks = np.arange(1, n // 2 + 1)
    # P(Bin(n, 1/2) <= r - 1) for each rank r, exactly (n is a few hundred at most); no scipy
    # import, which costs more than a probe call on a busy machine
    below = np.cumsum([math.comb(n, i) for i in range(n // 2)]) / 2.0**n
    ranks = ranks[1 - 2 * below >= MEDIAN_CONFIDENCE]
    if not len(ranks):
        return -np.inf, np.inf
    ordered = np.sort(times)
    return float(ordered[ranks[-1] - 1]), float(ordered[n - ranks[-1]])


def median_spread(times: np.ndarray) -> float:
    """Half-width of :func:`median_interval` over the median (inf while undetermined)."""
    low, high = median_interval(times)
    return float((high - low) / 2 / np.median(times)) if np.isfinite(high - low) else np.inf


def _probe_done(times: list[float], budget: float, min_iters: int, most: int) -> bool:
    """Enough batch-1 calls: the median stable, the budget spent, or the most allowed."""
    if len(times) < min_iters:
        return False
    spent = sum(times) + float(np.median(times)) > budget
    return len(times) >= most or spent or median_spread(np.asarray(times)) <= STABLE_WITHIN


def probe_latency(
    method: Method,
    runtime: Runtime,
    budget_seconds: float,
    min_iters: int,
    warmup_iters: int | None = None,
    measure_iters: int | None = None,
    advance: Callable[..., None] | None = None,
    timed: Sequence[float] = (),
) -> np.ndarray:
    """Seconds of batch-1 ``predict`` calls [n]: ``measure_iters`` when given; else at
    least ``min_iters``, then until the median is known to within :data:`STABLE_WITHIN`
    (:func:`median_spread`), ``budget_seconds`` are spent, or :func:`probe_iters`'s most.
    ``timed`` holds seconds of one-image calls already made (the prediction pass's): they
    count as the first calls, and the budget is what the new calls spend (ignored with
    ``measure_iters`` or a transductive method). ``advance(1, status=...)`` is called after
    each new timed call (a progress display)."""
    import torch

    default_warmup, most = probe_iters(runtime.device)
    warmup = default_warmup if warmup_iters is None else warmup_iters
    per_call = probe_set_size(method)
    single = synthetic_images(per_call, method.geometry.output_size, runtime.device)  # [k,3,S,S]
    sync = synchronizer(runtime.device)
    reused = list(timed) if measure_iters is None and per_call == 1 else []
    times: list[float] = list(reused)
    budget = budget_seconds + sum(reused)  # what the reused calls took was spent by the pass
    if reused and _probe_done(times, budget, min_iters, most):
        return np.asarray(times)
    with torch.no_grad(), runtime.autocast():
        for _ in range(warmup):
            method.predict(single)
        while not (
            len(times) >= measure_iters
            if measure_iters is not None
            else _probe_done(times, budget, min_iters, most)
        ):
            sync()
            start = time.perf_counter()
            method.predict(single)
            sync()
            times.append(time.perf_counter() - start)
            if advance is not None:
                advance(1, status=latency_status(np.asarray(times) / per_call))
    return np.asarray(times) / per_call


def latency_status(latency: np.ndarray) -> str:
    """``median 12.3 ms ± 4 %`` (the spread of :func:`median_spread`; ``± ?`` while unknown)."""
    spread = median_spread(latency)
    known = f"± {100 * spread:.0f} %" if np.isfinite(spread) else "± ?"
    return f"median {np.median(latency) * 1e3:.4g} ms {known}"


def evaluation_figures(
    method: Method,
    runtime: Runtime,
    settings: LatencySettings,
    batch_sizes: np.ndarray,
    batch_seconds: np.ndarray,
    peak_memory_mb: float,
    cost: MethodCost,
    advance: Callable[..., None] | None = None,
) -> dict[str, float]:
    """``ad eval``'s figures of one category (``EVALUATION_SOURCES`` says how each is made).

    ``batch_sizes``/``batch_seconds`` [T]: images and device-synchronised seconds of each
    predict call of the prediction pass; the batch-1 probe gets ``settings.budget_fraction``
    of their sum. ``efficiency_seconds`` is the time spent here; ``advance`` follows the
    probe's calls (a progress display).
    """
    started = time.perf_counter()
    latency = probe_latency(
        method,
        runtime,
        budget_seconds=settings.budget_fraction * float(batch_seconds.sum()),
        min_iters=settings.min_iters,
        warmup_iters=settings.warmup_iters,
        measure_iters=settings.measure_iters,
        advance=advance,
        timed=batch_seconds[batch_sizes == 1].tolist(),  # the pass's one-image calls
    )  # [n] seconds
    figures = {
        "latency_ms_median": float(np.median(latency) * 1e3),
        "latency_ms_p90": float(np.percentile(latency, 90) * 1e3),
        "batch_ms_per_image": float(np.median(batch_seconds / batch_sizes) * 1e3),
        "throughput_ips": float(batch_sizes.sum() / batch_seconds.sum()),
        "peak_memory_mb": peak_memory_mb,
        "params_total": float(cost.params_total),
        "memory_bank_mb": method.memory_bank_bytes() / MIB,
        "gflops": cost.gflops,
        "latency_probe_iters": float(len(latency)),
        "efficiency_seconds": time.perf_counter() - started,
    }
    return {name: figures[name] for name in EFFICIENCY_COLUMNS}
