"""Where miniCLIP and AF-CLIP spend one image's time, against their FLOP floor at this CPU's peak.

    .venv/bin/python benchmarks/profile_clip.py --methods miniclip afclip [--rows 12]

Per method (random weights, fitted zero-shot on the category ``bottle``, one uint8 image at
the method's input size, 518 px by default): GFLOPs of one ``predict`` (FlopCounterMode,
multiply-add = 2), the fp32 peak of this CPU at torch's thread count (median of
``torch.mm`` 4096 x 4096 calls), the floor (GFLOPs / peak), the measured median of
``--repeats`` predict calls after a warm-up and its ratio to the floor, then one
``torch.profiler`` profile of one call: the operators by self CPU time (``--rows`` of them).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import print_machine
from torch.profiler import ProfilerActivity, profile

from adcore.run.efficiency import count_gflops, synthetic_images


def fp32_peak_gflops(size: int = 4096, repeats: int = 5) -> float:
    """Median GFLOP/s of ``torch.mm`` on two [size, size] fp32 matrices (2 n^3 FLOPs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def build(name: str, resolution: int) -> object:
    """miniCLIP or AF-CLIP with their default backbones on random weights, fitted zero-shot."""
    from ad_afclip.config import AFCLIPConfig, MiniCLIPConfig
    from ad_afclip.plugin import build as build_afclip
    from ad_afclip.plugin import build_mini
    from adcore.contracts.method import FitContext, Runtime

    factory, config = {
        "afclip": (build_afclip, AFCLIPConfig),
        "miniclip": (build_mini, MiniCLIPConfig),
    }[name]
    method = factory(config(pretrained="none", resolution=resolution), Runtime(seed=0))
    method.fit(FitContext("bottle", "bottle", 0))
    return method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["miniclip", "afclip"])
    parser.add_argument("--resolution", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3, help="timed predict calls")
    parser.add_argument("--rows", type=int, default=12, help="operators shown per profile")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine("before")
    peak = fp32_peak_gflops()
    print(f"fp32 peak, torch.mm 4096x4096 on {torch.get_num_threads()} threads: {peak:.0f} GFLOP/s")
    for name in args.methods:
        method = build(name, args.resolution)
        image = synthetic_images(1, method.geometry.output_size, "cpu")  # [1,3,S,S] uint8
        with torch.no_grad():
            gflops = count_gflops(lambda m=method, x=image: m.predict(x))
            method.predict(image)  # warm-up
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                method.predict(image)
                seconds.append(time.perf_counter() - started)
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                method.predict(image)
        floor = gflops / peak
        measured = statistics.median(seconds)
        print(
            f"\n{name} at {method.geometry.output_size} px: {gflops:.1f} GFLOPs, floor "
            f"{floor:.3f} s at the peak, measured {measured:.3f} s (median of {args.repeats}, "
            f"{min(seconds):.3f}-{max(seconds):.3f}): {measured / floor:.2f}x the floor"
        )
        table = profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        print(table)
    print_machine("after")


if __name__ == "__main__":
    main()
