"""fp32 against bf16, per method, on the synthetic set: how far the results move, how much faster.

    .venv/bin/python benchmarks/bench_precision.py [--methods winclip patchcore miniclip]
        [--categories fabric] [--batch-size 1] [--device cpu] [--json out.json]

Each method is built twice from the same random weights (``--random-weights``: nothing is
downloaded), once per ``model.precision``, and fitted on the same support set (the
method's natural setting unless ``--k-shot``). The test images of each category are then
predicted batch by batch by both, alternating which goes first, so that a shared, busy
machine slows both alike; the figures are medians over batches, with the load average
before and after. Reported: relative L2 difference of the maps and of the scores, image
and pixel AUROC of each (exact, ``adcore.metrics``), and time per image.

bf16 on a CPU needs AMX or AVX512-BF16 (``adcore.infra.precision``); on CUDA, pass
``--device cuda`` (and ``--low fp16`` for fp16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from _common import pair_ratios, print_machine, shown_ratios

from adcore.config.problems import validate_base
from adcore.config.resolve import resolve
from adcore.contracts.method import Method, Runtime
from adcore.data.loading import make_loader
from adcore.data.support import choose_support
from adcore.metrics.ranking import image_auroc, pixel_auroc
from adcore.plugins.registry import get_registry
from adcore.run.runner import build_dataset, build_method

NATURAL_K = {"winclip": 0, "patchcore": "all", "miniclip": 0, "afclip": 0}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(name: str, precision: str, args: argparse.Namespace) -> tuple[Method, Any]:
    """The method at ``precision`` with random weights, and the resolved config."""
    raw = {
        "experiment": {"seed": 0},
        "model": {"name": name, "device": args.device, "precision": precision},
        "data": {"dataset": "synthetic", "k_shot": args.k_shot or NATURAL_K.get(name, 0)},
    }
    config = resolve(validate_base(raw), get_registry(), random_weights=True)
    runtime = Runtime(device=args.device, precision=precision, seed=0)
    return build_method(config, runtime), config


def fit(method: Method, support: list, category: str, class_name: str, batch: int) -> float:
    """Fit on the support set -> seconds."""
    from adcore.contracts.method import FitContext

    runtime = method.runtime
    loader = make_loader(support, method.geometry, batch) if support else []
    started = time.perf_counter()
    with torch.no_grad(), runtime.autocast():
        batches = (item["image"].to(runtime.device) for item in loader)
        method.fit(FitContext(category, class_name, len(support), batches))
    synchronize(runtime.device)
    return time.perf_counter() - started


def predict(method: Method, images: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """-> seconds, scores [B], maps [B,H,W] (on the CPU, fp32)."""
    runtime = method.runtime
    images = images.to(runtime.device)
    synchronize(runtime.device)
    started = time.perf_counter()
    with torch.no_grad(), runtime.autocast():
        prediction = method.predict(images)
    synchronize(runtime.device)
    elapsed = time.perf_counter() - started
    return elapsed, prediction.scores.float().cpu(), prediction.maps.float().cpu()


def relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(other - reference) / torch.linalg.vector_norm(reference))


def compare(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """fp32 and ``args.low`` side by side on every chosen category of the synthetic set."""
    methods, config = {}, None
    for precision in ("fp32", args.low):
        methods[precision], config = build(name, precision, args)
    dataset = build_dataset(config.dataset, config.dataset_config, None)
    categories = args.categories or dataset.categories()
    k_shot = config.base.data.k_shot
    outputs: dict[str, dict[str, list[torch.Tensor]]] = {
        p: {"scores": [], "maps": []} for p in methods
    }
    seconds: dict[str, list[float]] = {p: [] for p in methods}
    fit_seconds = dict.fromkeys(methods, 0.0)
    labels, masks = [], []
    for category in categories:
        support = choose_support(dataset.samples(category, "train"), k_shot, 0, category)
        for precision, method in methods.items():
            fit_seconds[precision] += fit(
                method, support, category, dataset.class_name(category), args.batch_size
            )
        test = dataset.samples(category, "test")
        if args.max_images:  # as many normal as anomalous images, in the set's order
            normal = [s for s in test if s.label == 0][: args.max_images // 2]
            anomalous = [s for s in test if s.label == 1][: args.max_images - len(normal)]
            test = normal + anomalous
        geometry = methods["fp32"].geometry
        for index, batch in enumerate(make_loader(test, geometry, args.batch_size)):
            order = list(methods) if index % 2 == 0 else list(methods)[::-1]
            if index == 0:  # warm-up: first calls allocate and pick kernels
                for precision in order:
                    predict(methods[precision], batch["image"])
            for precision in order:
                elapsed, scores, maps = predict(methods[precision], batch["image"])
                seconds[precision].append(elapsed / len(batch["image"]))
                outputs[precision]["scores"].append(scores)
                outputs[precision]["maps"].append(maps)
            labels.append(batch["label"])
            masks.append(batch["mask"])
            print(f"  {name} {category} batch {index}: " + ", ".join(
                f"{p} {seconds[p][-1] * 1000:.0f} ms/img" for p in methods
            ), flush=True)  # fmt: skip
    label, mask = torch.cat(labels).numpy(), torch.cat(masks).numpy()
    result: dict[str, Any] = {
        "method": name,
        "k_shot": k_shot,
        "categories": categories,
        "images": len(label),
    }
    cat = {p: {k: torch.cat(v) for k, v in out.items()} for p, out in outputs.items()}
    for precision in methods:
        result[precision] = {
            "image_auroc": 100 * image_auroc(cat[precision]["scores"].numpy(), label),
            "pixel_auroc": 100 * pixel_auroc(cat[precision]["maps"].numpy(), mask),
            "ms_per_image": 1000 * statistics.median(seconds[precision]),
            "fit_s": fit_seconds[precision],
        }
    low = args.low
    result["maps_relative_difference"] = relative(cat["fp32"]["maps"], cat[low]["maps"])
    result["scores_relative_difference"] = relative(cat["fp32"]["scores"], cat[low]["scores"])
    result["speedup"] = pair_ratios(seconds["fp32"], seconds[low])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["winclip", "patchcore", "miniclip"])
    parser.add_argument("--categories", nargs="+", default=None, help="default: all three")
    parser.add_argument("--k-shot", default=None, help="default: each method's natural one")
    parser.add_argument("--max-images", type=int, default=None, help="test images a category")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--low", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.k_shot is not None and args.k_shot != "all":
        args.k_shot = int(args.k_shot)
    machine_before = print_machine("before")
    results = []
    for name in args.methods:
        results.append(compare(name, args))
        print(json.dumps(results[-1]), flush=True)
    low = args.low
    print()
    machine_after = print_machine("after")
    print(f"torch {torch.__version__}; {args.device}; speed-up: fp32 / {low} per batch pair\n")
    print(
        f"| method (k) | images | maps rel. diff | scores rel. diff | image AUROC fp32 / {low} "
        f"| pixel AUROC fp32 / {low} | ms/img fp32 / {low} | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        full, half = r["fp32"], r[low]
        print(
            f"| {r['method']} ({r['k_shot']}) | {r['images']} "
            f"| {r['maps_relative_difference']:.1e} | {r['scores_relative_difference']:.1e} "
            f"| {full['image_auroc']:.2f} / {half['image_auroc']:.2f} "
            f"| {full['pixel_auroc']:.2f} / {half['pixel_auroc']:.2f} "
            f"| {full['ms_per_image']:.0f} / {half['ms_per_image']:.0f} "
            f"| {shown_ratios(r['speedup'])} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"machine": [machine_before, machine_after], "results": results}, handle, indent=2
            )


if __name__ == "__main__":
    main()
