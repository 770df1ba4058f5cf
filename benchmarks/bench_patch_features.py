"""PatchCore's patch-feature stage: memory layout of the backbone, and how the locally aware
pooling is computed, side by side in one process.

Four variants of the same stage (random wide_resnet50_2, layer2 + layer3, 3x3 neighbourhoods
pooled to 1024 and aggregated to 1024, as PatchCore's defaults), run in alternation:

- ``unfold, contiguous``: ``F.unfold`` then ``adaptive_avg_pool`` (the authors' code's
  arithmetic), backbone in PyTorch's default layout;
- ``unfold, channels-last``; ``grouped conv, contiguous``;
- ``grouped conv, channels-last``: what ``ad`` runs.

Prints the median time per image of each and the largest difference of its features from
the first variant's, relative to their largest magnitude.

    .venv/bin/python benchmarks/bench_patch_features.py --batch-size 8 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="wide_resnet50_2", help="timm architecture.")
    parser.add_argument("--size", type=int, default=224, help="Input side in pixels.")
    parser.add_argument("--batch-size", type=int, default=8, help="Images per forward.")
    parser.add_argument("--rounds", type=int, default=5, help="Timed forwards per variant.")
    args = parser.parse_args()

    import torch
    from _common import pair_ratios, print_machine, shown_ratios

    import ad_patchcore.model as patch_model
    from ad_patchcore.backbone import build_backbone

    print_machine("before")
    backbone, _ = build_backbone(args.backbone, "none", ["layer2", "layer3"], seed=0)
    images = torch.randn(args.batch_size, 3, args.size, args.size)
    original = patch_model.local_aggregation
    variants = {}
    for pooling in ("unfold", "grouped conv"):
        for layout in ("contiguous", "channels-last"):
            model = patch_model.LocallyAwarePatchFeatures(  # .to() converts in place: a copy
                copy.deepcopy(backbone), 3, 1024, 1024, channels_last=layout == "channels-last"
            ).eval()
            variants[f"{pooling}, {layout}"] = (model, pooling == "grouped conv")

    def run(model: torch.nn.Module, grouped: bool) -> torch.Tensor:
        def pool(features: torch.Tensor, patch: int, dim: int) -> torch.Tensor:
            return original(features, patch, dim, grouped=grouped)

        patch_model.local_aggregation = pool
        try:
            return model(images)[0]
        finally:
            patch_model.local_aggregation = original

    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    with torch.inference_mode():
        for name, (model, grouped) in variants.items():  # warm-up, and the outputs
            outputs[name] = run(model, grouped)
        for _ in range(args.rounds):
            for name, (model, grouped) in variants.items():
                started = time.perf_counter()
                run(model, grouped)
                times[name].append(time.perf_counter() - started)
    reference = outputs["unfold, contiguous"]
    scale = reference.abs().max()
    print_machine("after")
    print(f"{args.backbone}, {args.size} px, batch {args.batch_size}, {args.rounds} rounds")
    print(f"{'variant':32} {'ms/image':>9} {'max rel diff':>13}  first / this, per round")
    for name, spent in times.items():
        per_image = 1000 * statistics.median(spent) / args.batch_size
        difference = ((outputs[name] - reference).abs().max() / scale).item()
        speedup = shown_ratios(pair_ratios(times["unfold, contiguous"], spent))
        print(f"{name:32} {per_image:9.1f} {difference:13.1e}  {speedup}")


if __name__ == "__main__":
    main()
