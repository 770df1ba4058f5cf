"""``ad-runtime predict BUNDLE IMAGES... --output OUT``: score image files with an exported
bundle, writing the ``scores.csv`` (and ``maps/``) that ``ad predict`` writes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ad_runtime.errors import AdError, UsageError
from ad_runtime.model import Model
from ad_runtime.predictions import find_images, write_scores


def parser() -> argparse.ArgumentParser:
    """The command line: ``ad-runtime predict``."""
    top = argparse.ArgumentParser(
        prog="ad-runtime", description="Run models exported by ad export, without torch."
    )
    commands = top.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="Score images with a bundle: scores.csv and maps/ as ad predict."
    )
    predict.add_argument("bundle", type=Path, help="Bundle folder written by ad export.")
    predict.add_argument(
        "images", type=Path, nargs="+", help="Image files or folders (searched recursively)."
    )
    predict.add_argument(
        "--output", type=Path, default=Path("predictions"),
        help="Folder for scores.csv and maps/ (default: predictions).",
    )  # fmt: skip
    predict.add_argument(
        "--threshold", type=float, default=None,
        help="Raw image score at or above which an image is anomalous (default: the bundle's).",
    )  # fmt: skip
    predict.add_argument(
        "--batch-size", type=int, default=8, help="Images per graph call (default: 8)."
    )
    predict.add_argument(
        "--engine", choices=["onnxruntime", "openvino"], default=None,
        help="Inference engine (default: the bundle's format's; openvino: pip install "
        "'ad-runtime[openvino]').",
    )  # fmt: skip
    predict.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], default=None,
        help="OpenVINO's inference precision (default: the bundle's): fp32, or bf16/fp16 on "
        "CPUs with it; ONNX Runtime runs fp32.",
    )  # fmt: skip
    predict.add_argument("--no-maps", action="store_true", help="Write scores.csv only.")
    predict.add_argument("--json", action="store_true", help="Print machine-readable JSON.")
    predict.add_argument("--quiet", action="store_true", help="No progress lines on stderr.")
    return top


def predict(args: argparse.Namespace) -> None:
    """Score the images and write the outputs; prints a summary (or JSON) on stdout."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} is below 1.", "Pass 1 or more.")
    model = Model(args.bundle, args.threshold, engine=args.engine, precision=args.precision)
    images = find_images([p.expanduser() for p in args.images])
    output = args.output.expanduser()

    def advance(done: int) -> None:
        if not args.quiet:
            print(f"scored {done}/{len(images)}", file=sys.stderr, flush=True)

    scores, _ = model.score_files(images, output, args.batch_size, not args.no_maps, advance)
    results = write_scores(images, scores, model.verdicts, output)
    if args.json:
        rows = [
            {"path": str(r.path), "score": r.score, "normalised_score": r.normalised,
             "anomalous": r.anomalous}
            for r in results
        ]  # fmt: skip
        verdicts = model.verdicts
        print(json.dumps({"threshold": verdicts.threshold, "threshold_source": verdicts.source,
                          "images": rows}, indent=2))  # fmt: skip
        return
    flagged = sum(r.anomalous for r in results)
    print(f"{len(results)} images, {flagged} anomalous (threshold {model.verdicts.threshold:.6g}, "
          f"{model.verdicts.source}); scores in {output / 'scores.csv'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0, or a user error's one paragraph on stderr and its exit code
    (a traceback only with ``AD_DEBUG=1``)."""
    args = parser().parse_args(argv)
    try:
        predict(args)
    except AdError as error:
        if os.environ.get("AD_DEBUG") == "1":
            raise
        print(f"Error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
