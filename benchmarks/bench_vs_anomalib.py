"""``ad`` against anomalib, side by side: WinCLIP predict, PatchCore features, coreset, predict.

    .venv/bin/python benchmarks/bench_vs_anomalib.py --anomalib-python /tmp/anomalib-venv/bin/python
        [--repeats 5] [--train-images 16] [--json out.json]

anomalib is optional and lives in its own environment (it pins its own dependencies); make
one once, with the same torch as ours:

    python -m venv /tmp/anomalib-venv
    /tmp/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/anomalib-venv/bin/pip install anomalib "open_clip_torch>=2.23.0,<2.26.1" timm

or, without a second torch, an environment that sees ours for everything but anomalib and
its open_clip (a ``.pth`` line puts our site-packages after its own):

    python -m venv /tmp/anomalib-venv
    site() { "$1" -c "import site; print(site.getsitepackages()[0])"; }
    site .venv/bin/python > "$(site /tmp/anomalib-venv/bin/python)/ad.pth"
    /tmp/anomalib-venv/bin/pip install --no-deps anomalib==2.7.0 open_clip_torch==2.24.0
    /tmp/anomalib-venv/bin/pip install jsonargparse omegaconf lightning kornia tifffile \
        pandas platformdirs scikit-image einops FrEIA

open_clip stays inside anomalib's own pin (``<2.26.1``): anomalib 2.7.0 reorders each window's
tokens to sequence-first before calling the transformer, and open_clip 2.26 and later run it
batch-first, so attention mixes windows and every window embedding comes out the same
(anomalib issue #2571). The worker refuses such an environment, since its WinCLIP would be
timed computing something else.

Without ``--anomalib-python`` (or when that interpreter cannot import anomalib) only our side
is timed. anomalib's side runs in a worker process of that interpreter; both sides get the
same random weights (our models' state dicts, loaded into anomalib's ``WinClipModel`` and
``PatchcoreModel``) and the same inputs, and the steps alternate - ours, theirs, ours, ... -
within one run, so a shared, busy machine slows both alike. Each step is reported as the
medians of ``--repeats`` pairs after one warm-up pair, and as the min / median / max of the
per-pair ratios anomalib / ad; the machine (CPU, vector extensions, threads, load) is printed
before and after. Only the models the chosen ``--steps`` need are built (PatchCore steps
alone build no WinCLIP, on either side).

Steps (CPU, fp32 unless marked):
- ``winclip_predict``: zero-shot, ViT-B-16-plus-240 at 240 px, ``--winclip-images`` images a
  call (default 1); our bf16 (``model.precision: bf16``) is timed alongside against
  anomalib's fp32.
- ``patchcore_features``: wide_resnet50_2 layer2+3 at 224 px, ``--feature-batch`` images:
  each side's own patch embedding (ours: locally aware features pooled to 1024;
  anomalib's: 3x3 average pool, concatenation to 1536).
- ``patchcore_coreset``: 10 % greedy coreset of the same ``--train-images`` x 784 x 1024
  feature matrix (ours: ``approximate_greedy_coreset`` after a 128-d random projection;
  anomalib's: ``KCenterGreedy``, sparse random projection, then greedy).
- ``patchcore_predict``: one image against a bank of the same size (10 % of the features).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import pair_ratios, print_machine, shown_ratios

# anomalib's side, run by the other interpreter: reads one JSON command a line, answers one.
WORKER = r"""
import json, sys, time
import torch
folder = sys.argv[1]
def load(name):
    return torch.load(f"{folder}/{name}.pt", weights_only=True)
def answer(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()
try:
    import anomalib, open_clip
    from anomalib.models.components import KCenterGreedy
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    from anomalib.models.image.winclip.torch_model import WinClipModel
except Exception as error:
    answer({"error": f"{type(error).__name__}: {error}"})
    sys.exit(0)
from importlib.metadata import version as installed
open_clip_version = installed("open_clip_torch")
if tuple(int(part) for part in open_clip_version.split(".")[:3]) >= (2, 26, 1):
    answer({"error": f"open_clip {open_clip_version} is outside anomalib's pin (<2.26.1); "
            "its WinCLIP window embeddings are wrong there (anomalib issue #2571): "
            "pip install 'open_clip_torch>=2.23.0,<2.26.1' in that environment"})
    sys.exit(0)
inputs = load("inputs")
create = open_clip.create_model_and_transforms
def same_random_weights(name, pretrained=None, **kwargs):
    model, train, test = create(name, pretrained=None, **kwargs)
    model.load_state_dict(load("clip"))
    return model, train, test
open_clip.create_model_and_transforms = same_random_weights
wanted = set(inputs["steps"])
if "winclip_predict" in wanted:
    winclip = WinClipModel(class_name=inputs["class_name"]).eval()
if wanted & {"patchcore_features", "patchcore_predict"}:
    patchcore = PatchcoreModel(layers=["layer2", "layer3"], pre_trained=False).eval()
    missing, _ = patchcore.feature_extractor.feature_extractor.load_state_dict(
        load("backbone"), strict=False)
    assert not missing, missing
    with torch.no_grad():
        patchcore.train()
        embedding = patchcore(inputs["patch_images"])
        patchcore.eval()
    rows = torch.randperm(len(embedding), generator=torch.Generator().manual_seed(0))
    patchcore.memory_bank = embedding[rows[: inputs["bank_size"]]].contiguous()
if "patchcore_coreset" in wanted:
    features = load("features")
def features_step():
    patchcore.train()
    with torch.no_grad():
        patchcore(inputs["patch_images"])
    patchcore.embedding_store.clear()
    patchcore.eval()
steps = {
    "winclip_predict": lambda: winclip(inputs["winclip_image"]),
    "patchcore_features": features_step,
    "patchcore_coreset": lambda: KCenterGreedy(features, 0.1).sample_coreset(),
    "patchcore_predict": lambda: patchcore(inputs["patch_image"]),
}
answer({"ready": anomalib.__version__})
for line in sys.stdin:
    command = json.loads(line)
    if command["op"] == "outputs":
        with torch.no_grad():
            result = winclip(inputs["winclip_image"])
        answer({"winclip_score": result.pred_score.tolist(),
                "winclip_map": result.anomaly_map.flatten().tolist()})
        continue
    clock = time.process_time if command.get("cpu_time") else time.perf_counter
    started = clock()
    with torch.no_grad():
        steps[command["step"]]()
    answer({"seconds": clock() - started})
"""


STEPS = (
    "winclip_predict",
    "patchcore_features",
    "patchcore_coreset",
    "patchcore_predict",
    "winclip_predict_bf16",
)


class Anomalib:
    """anomalib's steps in a worker process of another interpreter."""

    def __init__(self, python: str, folder: Path) -> None:
        self.process = subprocess.Popen(
            [python, "-c", WORKER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"},
        )
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        self.version = reply["ready"]

    def _read(self) -> dict[str, Any]:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the anomalib worker stopped (exit {self.process.wait()})")

    def ask(self, **command: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def timed(step: Callable[[], object], cpu_time: bool = False) -> float:
    """Seconds of one call: wall time, or this process's CPU time (all its threads)."""
    clock = time.process_time if cpu_time else time.perf_counter
    started = clock()
    with torch.no_grad():
        step()
    return clock() - started


def build_ours(
    args: argparse.Namespace, names: list[str], folder: Path
) -> dict[str, Callable[[], object]]:
    """Our methods for the steps ``names``, on random weights; writes the weights and inputs
    anomalib's side loads for them."""
    from ad_patchcore.config import PatchCoreConfig
    from ad_patchcore.coreset import approximate_greedy_coreset
    from ad_patchcore.plugin import factory as patchcore_factory
    from ad_winclip.config import WinClipConfig
    from ad_winclip.plugin import factory as winclip_factory
    from adcore.contracts.method import FitContext, Runtime

    generator = torch.Generator().manual_seed(0)

    def images(count: int, size: int) -> torch.Tensor:
        shape = (count, 3, size, size)
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)

    class_name = "bottle"
    inputs: dict[str, Any] = {"class_name": class_name, "steps": names}
    steps: dict[str, Callable[[], object]] = {}
    if {"winclip_predict", "winclip_predict_bf16"} & set(names):
        winclip_config = WinClipConfig(pretrained="none")
        winclip = winclip_factory(winclip_config, Runtime(seed=0))
        winclip.fit(FitContext("bottle", class_name, 0))
        winclip_image = images(args.winclip_images, winclip_config.resolution)
        torch.save(winclip.model.clip.state_dict(), folder / "clip.pt")
        inputs["winclip_image"] = winclip.geometry.normalize(winclip_image)
        steps["winclip_predict"] = lambda: winclip.predict(winclip_image)
        steps["_winclip_outputs"] = lambda: winclip.predict(winclip_image)
        if "winclip_predict_bf16" in names:
            winclip_bf16 = winclip_factory(winclip_config, Runtime(precision="bf16", seed=0))
            winclip_bf16.fit(FitContext("bottle", class_name, 0))
            steps["winclip_predict_bf16"] = lambda: winclip_bf16.predict(winclip_image)
    if not {"patchcore_features", "patchcore_coreset", "patchcore_predict"} & set(names):
        torch.save(inputs, folder / "inputs.pt")
        return steps

    patch_config = PatchCoreConfig(pretrained="none", resolution=224, crop=None)
    patchcore = patchcore_factory(patch_config, Runtime(seed=0))
    train = images(args.train_images, 224)
    with torch.no_grad():
        features, _ = patchcore._features(train)  # [n, 784, 1024]
    features = features.reshape(-1, features.shape[-1]).contiguous()
    batches = list(train.split(args.feature_batch))
    patchcore.fit(FitContext("bottle", class_name, len(train), batches))
    patch_batch, patch_image = train[: args.feature_batch], images(1, 224)

    torch.save(patchcore.model.backbone.state_dict(), folder / "backbone.pt")
    torch.save(features, folder / "features.pt")
    inputs["patch_images"] = patchcore.geometry.normalize(patch_batch)
    inputs["patch_image"] = patchcore.geometry.normalize(patch_image)
    inputs["bank_size"] = len(patchcore.bank)
    torch.save(inputs, folder / "inputs.pt")

    def coreset() -> object:
        return approximate_greedy_coreset(
            patchcore._project(features), 0.1, 0, patch_config.coreset_starting_points
        )

    steps["patchcore_features"] = lambda: patchcore._features(patch_batch)
    steps["patchcore_coreset"] = coreset
    steps["patchcore_predict"] = lambda: patchcore.predict(patch_image)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--anomalib-python", default=None, help="interpreter with anomalib")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--feature-batch", type=int, default=4)
    parser.add_argument(
        "--winclip-images",
        type=int,
        default=1,
        help="images in each WinCLIP predict call (both sides); times are per call",
    )
    parser.add_argument("--steps", nargs="+", default=None, choices=STEPS, help="default: all")
    parser.add_argument("--no-bf16", action="store_true", help="skip our bf16 WinCLIP")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="each side's process CPU time instead of wall time (steadier on a shared "
        "machine; with OMP_NUM_THREADS=1 it leaves out threads spinning at barriers)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.no_bf16 and "winclip_predict_bf16" in (args.steps or []):
        parser.error("--steps winclip_predict_bf16 needs our bf16 WinCLIP: drop --no-bf16")
    if args.anomalib_python and not shutil.which(args.anomalib_python):
        parser.error(
            f"--anomalib-python {args.anomalib_python}: no such executable; make the environment "
            "as this script's docstring says, or leave the option out to time our side only"
        )
    names = args.steps or [s for s in STEPS if not (args.no_bf16 and s.endswith("_bf16"))]
    machine_before = print_machine("before")
    with tempfile.TemporaryDirectory(prefix="ad-vs-anomalib-") as tmp:
        folder = Path(tmp)
        ours = build_ours(args, names, folder)
        outputs = ours.pop("_winclip_outputs", None)
        theirs: Anomalib | None = None
        if args.anomalib_python:
            try:
                theirs = Anomalib(args.anomalib_python, folder)
            except (OSError, RuntimeError) as error:
                print(f"anomalib side skipped: {error}", file=sys.stderr)
        else:
            print(
                "anomalib side skipped: pass --anomalib-python PATH (see this script's "
                "docstring for how to make that environment).",
                file=sys.stderr,
            )
        times: dict[str, dict[str, list[float]]] = {n: {"ad": [], "anomalib": []} for n in names}
        for repeat in range(args.repeats + 1):  # the first round is the warm-up
            for name in names:
                ours_time = timed(ours[name], args.cpu_time)
                their_time = None
                if theirs is not None and not name.endswith("_bf16"):
                    reply = theirs.ask(op="time", step=name, cpu_time=args.cpu_time)
                    their_time = reply["seconds"]
                if repeat:
                    times[name]["ad"].append(ours_time)
                    if their_time is not None:
                        times[name]["anomalib"].append(their_time)
                    shown = "-" if their_time is None else f"{their_time:.3f}"
                    print(f"  {repeat} {name}: ad {ours_time:.3f} s, anomalib {shown} s")
        agreement = None
        if theirs is not None and outputs is not None:
            reply = theirs.ask(op="outputs")
            with torch.no_grad():
                mine = outputs()
            agreement = {
                "image_score_abs_diff": float(
                    (mine.scores - torch.tensor(reply["winclip_score"])).abs().max()
                ),
                "map_max_abs_diff": float(
                    (mine.maps.flatten() - torch.tensor(reply["winclip_map"])).abs().max()
                ),
            }
        if theirs is not None:
            theirs.close()
    version = theirs.version if theirs is not None else "absent"
    print()
    machine_after = print_machine("after")
    print(
        f"torch {torch.__version__}; anomalib {version}; {args.repeats} alternating pairs "
        f"after one warm-up pair; WinCLIP {args.winclip_images} image(s) a call; "
        f"{'process CPU time' if args.cpu_time else 'wall time'}\n"
    )
    print(
        "| step | ad s (median) | anomalib s (median) | anomalib / ad per pair: median "
        "(min-max) |\n|---|---|---|---|"
    )
    summary = {}
    for name in names:
        ad = statistics.median(times[name]["ad"])
        base = "winclip_predict" if name == "winclip_predict_bf16" else name
        other = times.get(base, {}).get("anomalib") or []
        anomalib = statistics.median(other) if other else None
        ratios = pair_ratios(other, times[name]["ad"]) if other else None
        summary[name] = {"ad_s": ad, "anomalib_s": anomalib, "anomalib_over_ad": ratios}
        shown = f"{anomalib:.3f}" if anomalib else "-"
        print(f"| {name} | {ad:.3f} | {shown} | {shown_ratios(ratios)} |")
    if agreement:
        print(f"\nWinCLIP outputs, ad against anomalib on the same weights: {agreement}")
    if args.json:
        machines = {"before": machine_before, "after": machine_after}
        record = {"machine": machines, "steps": summary, "times": times}
        Path(args.json).write_text(json.dumps({**record, "agreement": agreement}, indent=2))


if __name__ == "__main__":
    main()
