"""Images per second of the host loader on a folder of MVTec-sized PNGs.

    python benchmarks/bench_loading.py --cache-dir ~/.cache/ad/bench

Generates (once, into the cache dir) 1000 PNGs of 900x900 px with MVTec-like content
(smooth shading, texture and sensor noise, so PNG sizes are realistic), then times
``adcore.data.loading.make_loader`` decoding and resizing them to 240 px, with DataLoader
workers and without.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import print_machine

from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.dataset import Sample
from adcore.data.loading import make_loader


def write_image(path: Path, index: int, size: int, noise: np.ndarray) -> None:
    """Smooth shading and a coarse texture plus sensor noise (a shared field, shifted)."""
    import cv2

    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.full((size, size, 3), 120, np.float32)
    for _ in range(4):
        fx, fy, phase = rng.uniform(0.5, 12, 3)
        wave = np.sin(np.float32(2 * np.pi) * (fx * xx + fy * yy) + np.float32(phase))
        image += rng.uniform(10, 30, 3).astype(np.float32) * wave[..., None]
    image += np.roll(noise, tuple(rng.integers(0, size, 2)), axis=(0, 1))
    cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))


def ensure_images(folder: Path, count: int, size: int) -> list[Path]:
    """The benchmark folder; generated on first use, with a marker written last."""
    paths = [folder / f"{i:04d}.png" for i in range(count)]
    marker = folder / "complete"
    if marker.is_file():
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).normal(0, 2.5, (size, size, 3)).astype(np.float32)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # numpy and cv2 release the GIL
        list(pool.map(lambda i: write_image(paths[i], i, size, noise), range(count)))
    marker.write_text("ok")
    return paths


def images_per_second(
    paths: list[Path], output: int, batch_size: int, workers: int
) -> tuple[float, float]:
    """(images/s over the whole pass, seconds to the first batch)."""
    samples = [Sample(image_path=p, label=0, category="bench") for p in paths]
    loader = make_loader(samples, Preprocessing(size=output), batch_size, num_workers=workers)
    start = time.perf_counter()
    first = None
    seen = 0
    for batch in loader:
        seen += len(batch["image"])
        first = first if first is not None else time.perf_counter() - start
    elapsed = time.perf_counter() - start
    assert seen == len(paths) and batch["image"].shape[-1] == output
    return seen / elapsed, first or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the PNGs are kept")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=900)
    parser.add_argument("--output-size", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 0])
    args = parser.parse_args()

    cache = args.cache_dir or Path(tempfile.gettempdir()) / "ad-bench-loading"
    folder = cache.expanduser() / f"png-{args.images}x{args.image_size}px"
    start = time.perf_counter()
    paths = ensure_images(folder, args.images, args.image_size)
    prepared = time.perf_counter() - start
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    print(
        f"{len(paths)} PNGs of {args.image_size}px ({megabytes / len(paths):.2f} MB each) in "
        f"{folder} (ready in {prepared:.1f} s)"
    )
    print_machine("before")
    results = {}
    for workers in args.workers:
        rate, first = images_per_second(paths, args.output_size, args.batch_size, workers)
        results[workers] = rate
        print(
            f"num_workers={workers}: {rate:.1f} images/s at {args.output_size}px "
            f"(batch {args.batch_size}, first batch after {first:.2f} s)"
        )
    machine = print_machine("after")
    print(json.dumps({"machine": machine, "images_per_second": results}))


if __name__ == "__main__":
    main()
