"""Peak memory of MuSc against the size of the set it scores.

    python benchmarks/bench_musc_memory.py --sizes 4 12

Each set size runs in a fresh process: the model is built (random weights, the default
ViT-L/14-336 at 518 px unless told otherwise), its resident memory is read, then one
``predict_set`` scores N random images handed over in batches of 4, and the process's peak
resident memory during it is read (``VmHWM``, reset after loading). Printed per size: RSS
after loading, the peak, their difference, the growth per added image since the previous
size (what the set's features cost; the difference itself also holds fixed work space: the
backbone's activations and the mutual-scoring block), and the time of the set.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _common import print_machine


def rss_mib() -> float:
    """Current resident memory of this process, MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as stream:
        pages = int(stream.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mib() -> float:
    """Peak resident memory since the last :func:`reset_peak` (``VmHWM``), MiB."""
    with open("/proc/self/status") as stream:
        line = next(text for text in stream if text.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    """Start the peak afresh from the current RSS (Linux: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as stream:
        stream.write("5")


def one_set(size: int, backbone: str, resolution: int) -> dict[str, float]:
    """Build the method, score one set of ``size`` images, report memory and time."""
    import open_clip
    import torch

    from ad_musc.config import MuscConfig
    from ad_musc.method import Musc
    from adcore.contracts.method import Runtime

    torch.manual_seed(0)
    depth = open_clip.get_model_config(backbone)["vision_cfg"]["layers"]
    layers = [depth // 4, depth // 2, 3 * depth // 4, depth]  # ViT-L: the paper's 6/12/18/24
    config = MuscConfig(backbone=backbone, pretrained="none", resolution=resolution, layers=layers)
    method = Musc(config, Runtime(seed=0))
    loaded = rss_mib()
    reset_peak()  # loading's own transient peak is not the set's
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (size, 3, resolution, resolution), generator=generator)
    images = images.to(torch.uint8)
    started = time.perf_counter()
    with torch.no_grad():
        method.predict_set(iter(images.split(4)), size)
    seconds = time.perf_counter() - started
    return {"size": size, "loaded_mib": loaded, "peak_mib": peak_mib(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 12])
    parser.add_argument("--backbone", default="ViT-L-14-336")
    parser.add_argument("--resolution", type=int, default=518)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_set(args.one, args.backbone, args.resolution)))
        return
    print_machine("before")
    print(
        "| set size | RSS loaded, MiB | peak RSS, MiB | peak - loaded | MiB per added image | s |"
    )
    print("|---|---|---|---|---|---|")
    previous: tuple[int, float] | None = None
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), "--backbone", args.backbone]
        command += ["--resolution", str(args.resolution)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        grown = row["peak_mib"] - row["loaded_mib"]
        step = "" if previous is None else f"{(grown - previous[1]) / (size - previous[0]):.1f}"
        print(
            f"| {size} | {row['loaded_mib']:.0f} | {row['peak_mib']:.0f} | {grown:.0f} | "
            f"{step} | {row['seconds']:.1f} |",
            flush=True,
        )
        previous = (size, grown)
    print_machine("after")


if __name__ == "__main__":
    main()
