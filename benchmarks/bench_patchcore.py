"""PatchCore fit and inference cost on CPU, and how they grow with the training set.

Each training-set size runs in its own process so peak memory (ru_maxrss) is that run's
own. Random wide_resnet50_2 weights, 224 px inputs (the paper's crop), random images: the
cost does not depend on what the pixels show.

    .venv/bin/python benchmarks/bench_patchcore.py --counts 50 200 800
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

from _common import print_machine


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(count: int, args: argparse.Namespace) -> dict[str, float]:
    """One fit on ``count`` images and an inference pass, in this process."""
    import torch

    from ad_patchcore.config import PatchCoreConfig
    from ad_patchcore.plugin import factory
    from adcore.contracts.method import FitContext, Runtime

    config = PatchCoreConfig(
        backbone=args.backbone,
        pretrained="none",
        resolution=args.size,
        crop=None,
        feature_store=args.feature_store,
    )
    method = factory(config, Runtime(device="cpu", seed=0))
    generator = torch.Generator().manual_seed(0)
    shape = (count, 3, args.size, args.size)
    train = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    test = torch.randint(0, 256, (args.test_images, *shape[1:]), generator=generator).byte()
    batches = list(train.split(args.batch_size))
    baseline = peak_rss_mb()
    started = time.perf_counter()
    method.fit(FitContext("bench", "bench", count, batches))
    fit_s = time.perf_counter() - started
    fit_peak = peak_rss_mb()
    method.predict(test[: args.batch_size])  # warm-up
    started = time.perf_counter()
    for batch in test.split(args.batch_size):
        method.predict(batch)
    infer_s = time.perf_counter() - started
    features = method.bank.shape[0] / config.coreset_ratio
    return {
        "train_images": count,
        "patch_features": int(features),
        "bank_rows": method.bank.shape[0],
        "features_s": method.fit_seconds["features"],
        "coreset_s": method.fit_seconds["coreset"],
        "fit_s": fit_s,
        "inference_images_per_s": args.test_images / infer_s,
        "rss_before_fit_mb": baseline,
        "peak_rss_mb": max(fit_peak, peak_rss_mb()),
        "fit_growth_mb": fit_peak - baseline,
        "bank_mb": method.memory_bank_bytes() / 2**20,
        "all_features_mb": features * method.bank.shape[1] * 4 / 2**20,
        "load_average_1min": os.getloadavg()[0],  # other processes sharing the CPUs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--test-images", type=int, default=16)
    parser.add_argument(
        "--feature-store", choices=["memory", "disk"], default="memory", help="model.feature_store"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args)))
        return
    print_machine("before")
    rows = []
    for count in args.counts:
        command = [sys.executable, __file__, "--child", str(count)]
        command += ["--backbone", args.backbone, "--size", str(args.size)]
        command += ["--batch-size", str(args.batch_size), "--test-images", str(args.test_images)]
        command += ["--feature-store", args.feature_store]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"{row['train_images']:>5} images  {row['patch_features']:>7} features  "
            f"extract {row['features_s']:7.1f} s  coreset {row['coreset_s']:7.1f} s  "
            f"infer {row['inference_images_per_s']:5.2f} img/s  "
            f"peak {row['peak_rss_mb']:7.0f} MB  fit growth {row['fit_growth_mb']:7.0f} MB  "
            f"(all features {row['all_features_mb']:6.0f} MB, bank {row['bank_mb']:5.0f} MB)  "
            f"load {row['load_average_1min']:.1f}",
            flush=True,
        )
    for before, after in itertools.pairwise(rows):
        scale = after["train_images"] / before["train_images"]
        print(
            f"{before['train_images']} -> {after['train_images']} images (x{scale:g}): "
            f"extract x{after['features_s'] / before['features_s']:.1f}, "
            f"coreset x{after['coreset_s'] / before['coreset_s']:.1f}, "
            f"fit memory growth x{after['fit_growth_mb'] / before['fit_growth_mb']:.1f}, "
            f"bank x{after['bank_mb'] / before['bank_mb']:.1f}"
        )
    print_machine("after")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
