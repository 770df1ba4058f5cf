"""Where miniCLIP and AF-CLIP spend one image's time, against their FLOP floor at this CPU's peak.

    .venv/bin/python benchmarks/profile_clip.py --methods miniclip afclip [--rows 12]

Per method (random weights, fitted zero-shot on the category ``bottle``, one uint8 image at
the method's input size, 518 px by default): GFLOPs of one ``predict`` (FlopCounterMode,
multiply-add = 2), the fp32 peak of this CPU at torch's thread count (median of
``torch.mm`` 4096 x 4096 calls), the floor (GFLOPs / peak), the measured median of
``--repeats`` predict calls after a warm-up and its ratio to the floor, then one
``torch.profiler`` profile of one call: the operators by self CPU time (``--rows`` of them).

``--open-clip-blocks`` runs the frozen towers through open_clip's own blocks (attention by
``nn.MultiheadAttention``, the path before ``adcore.toolkit.vit_blocks``) for the profile
before; ``--pairs N`` times N alternating pairs of the two paths and prints the per-pair
ratios open_clip's / fused.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from _common import pair_ratios, print_machine, shown_ratios
from torch.profiler import ProfilerActivity, profile

from adcore.run.efficiency import count_gflops, synthetic_images


def fp32_peak_gflops(
    size: int = 4096, repeats: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median GFLOP/s of ``torch.mm`` on two [size, size] fp32 matrices (2 n^3 FLOPs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    seconds = []
    for _ in range(repeats):
        started = clock()
        torch.mm(a, b)
        seconds.append(clock() - started)
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


@contextlib.contextmanager
def open_clip_blocks(active: bool = True) -> Iterator[None]:
    """While active, the towers treat no block as plain: open_clip's own forward runs."""
    import ad_afclip.model as afclip_model

    original = afclip_model.plain_block
    if active:
        afclip_model.plain_block = lambda block: False
    try:
        yield
    finally:
        afclip_model.plain_block = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["miniclip", "afclip"])
    parser.add_argument("--resolution", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3, help="timed predict calls")
    parser.add_argument("--rows", type=int, default=12, help="operators shown per profile")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--open-clip-blocks", action="store_true", help="towers through open_clip's blocks"
    )
    parser.add_argument("--pairs", type=int, default=0, help="alternating pairs of both paths")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="process CPU time instead of wall time (steadier on a shared machine, with "
        "--threads 1)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine("before")
    clock = time.process_time if args.cpu_time else time.perf_counter
    peak = fp32_peak_gflops(clock=clock)
    kind = "CPU time" if args.cpu_time else "wall time"
    print(
        f"fp32 peak, torch.mm 4096x4096 on {torch.get_num_threads()} threads ({kind}): "
        f"{peak:.0f} GFLOP/s"
    )
    for name in args.methods:
        method = build(name, args.resolution)
        image = synthetic_images(1, method.geometry.output_size, "cpu")  # [1,3,S,S] uint8
        with torch.no_grad(), open_clip_blocks(args.open_clip_blocks):
            gflops = count_gflops(lambda m=method, x=image: m.predict(x))
            method.predict(image)  # warm-up
            seconds = []
            for _ in range(args.repeats):
                started = clock()
                method.predict(image)
                seconds.append(clock() - started)
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                method.predict(image)
        if args.pairs:
            timed: dict[bool, list[float]] = {True: [], False: []}
            with torch.no_grad():
                for _ in range(args.pairs):
                    for theirs in (True, False):
                        with open_clip_blocks(theirs):
                            started = clock()
                            method.predict(image)
                            timed[theirs].append(clock() - started)
            print(
                f"{name}: open_clip's blocks {statistics.median(timed[True]):.3f} s, fused "
                f"{statistics.median(timed[False]):.3f} s (medians); open_clip's / fused per "
                f"pair {shown_ratios(pair_ratios(timed[True], timed[False]))}"
            )
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
