"""WinCLIP cost relative to a bare forward of its visual tower (time and FLOP ratios).

    .venv/bin/python benchmarks/bench_winclip.py [--backbone ViT-B-16-plus-240] [--repeats 5]

Random weights (nothing is downloaded), zero-shot predict at batch 1, fp32 on the CPU unless
``--device`` says otherwise. The bare forward is ``Method.backbone_forward``: the image
embedding alone, the floor any CLIP-based method pays. For reference, the same exact windows
computed the straightforward way (every window sequence through open_clip's whole
transformer) are timed alongside, so that both ratios come from the same machine state.

FLOPs are counted twice: as run, and with PyTorch's fused ``nn.MultiheadAttention`` fast
path switched off, because ``FlopCounterMode`` does not see the projections inside the fused
kernel (the "as run" count of a bare ViT-B/16+ forward is 35 GFLOPs, the full one 52).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _common import pair_ratios, print_machine, shown_ratios
from torch.utils.flop_counter import FlopCounterMode

from ad_winclip.config import WinClipConfig
from ad_winclip.model import WinClip
from ad_winclip.plugin import factory
from adcore.contracts.method import FitContext, Runtime


def round_seconds(
    steps: list[Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> list[list[float]]:
    """Each step's time in every round; steps alternate so that a busy machine slows all
    alike, and the times of one round are compared with each other."""
    for step in steps:
        step()  # warm-up
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times, strict=True):
            start = clock()
            step()
            record.append(clock() - start)
    return times


def flops(step: Callable[[], object], fast_path: bool = True) -> int:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fast_path)
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    return counter.get_total_flops()


def straightforward(model: WinClip, images: torch.Tensor) -> list[torch.Tensor]:
    """Exact window embeddings, each window run through open_clip's whole tower."""
    visual = model.clip.visual
    visual(images)  # the image embedding
    tokens = model.embed_tokens(images)  # [1, 1+P, C]
    out = []
    for k in model.scales:
        x = tokens[0, getattr(model, f"window_tokens_{k}")]  # [W, 1+k*k, C]
        out.append(visual.ln_post(visual.transformer(x)[:, 0]) @ visual.proj)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16-plus-240")
    parser.add_argument("--resolution", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="process CPU time instead of wall time (steadier on a shared machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    print_machine("before")

    config = WinClipConfig(backbone=args.backbone, pretrained="none", resolution=args.resolution)
    method = factory(config, Runtime(device=args.device))
    method.fit(FitContext(category="bench", class_name="object", num_images=0))
    size = method.geometry.output_size
    images = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=args.device)
    normalised = method.geometry.normalize(images)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def predict() -> None:
        method.predict(images)
        sync()

    def bare() -> None:
        method.backbone_forward(normalised)
        sync()

    def baseline() -> None:
        straightforward(method.model, normalised)
        sync()

    with torch.no_grad():
        tokens = method.model.embed_tokens(normalised)
        qkv = method.model.first_block_qkv(tokens)
        for k, reference in zip(
            method.model.scales, straightforward(method.model, normalised), strict=True
        ):
            ours = method.model.window_embeddings(tokens, k, qkv)[0]
            torch.testing.assert_close(ours, reference, atol=1e-3, rtol=1e-3)
        rounds = round_seconds([predict, bare, baseline], args.repeats, clock)
        t_predict, t_bare, t_base = (statistics.median(r) for r in rounds)
        f_predict, f_bare, f_base = flops(predict), flops(bare), flops(baseline)
        g_predict, g_bare, g_base = (
            flops(step, fast_path=False) for step in (predict, bare, baseline)
        )
    kind = "CPU time" if args.cpu_time else "wall time"
    print_machine("after")
    print(
        f"backbone {args.backbone} at {size} px, {args.device}, "
        f"threads {torch.get_num_threads()}, {kind}, median of {args.repeats}"
    )
    print("                    time   GFLOPs as run  GFLOPs all counted")
    for name, t, f, g in (
        ("predict", t_predict, f_predict, g_predict),
        ("bare forward", t_bare, f_bare, g_bare),
        ("straightforward", t_base, f_base, g_base),
    ):
        print(f"{name:15s} {t * 1e3:8.1f} ms  {f / 1e9:13.1f}  {g / 1e9:18.1f}")
    print(
        f"winclip predict:        time ratio {shown_ratios(pair_ratios(rounds[0], rounds[1]))}  "
        f"FLOP ratio {f_predict / f_bare:5.2f} as run, {g_predict / g_bare:5.2f} all counted"
    )
    print(
        f"straightforward windows: time ratio {shown_ratios(pair_ratios(rounds[2], rounds[1]))}  "
        f"FLOP ratio {f_base / f_bare:5.2f} as run, {g_base / g_bare:5.2f} all counted"
    )


if __name__ == "__main__":
    main()
