"""``ad-runtime predict BUNDLE IMAGES... --output OUT``: score image files with an exported
bundle, writing the ``scores.csv`` (and ``maps/``) that ``ad predict`` writes; ``--watch DIR``
scores images as they appear (:mod:`ad_runtime.watch`). ``ad-runtime calibrate BUNDLE
--normal DIR``: the bundle's threshold.json from good parts (:mod:`ad_runtime.thresholds`).
``ad-runtime serve BUNDLE``: serve it over HTTP (:mod:`ad_runtime.serve`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ad_runtime.errors import AdError, UsageError
from ad_runtime.model import Model
from ad_runtime.predictions import find_images, write_scores


def home_path(text: str) -> Path:
    """A path option with ``~`` expanded (``--output '~/x'`` quoted reaches us unexpanded)."""
    return Path(text).expanduser()


def parser() -> argparse.ArgumentParser:
    """The command line: ``ad-runtime predict``."""
    top = argparse.ArgumentParser(
        prog="ad-runtime", description="Run models exported by ad export, without torch."
    )
    commands = top.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="Score images with a bundle: scores.csv and maps/ as ad predict."
    )
    predict.add_argument("bundle", type=home_path, help="Bundle folder written by ad export.")
    predict.add_argument(
        "images", type=home_path, nargs="*", help="Image files or folders (searched recursively)."
    )
    predict.add_argument(
        "--output", type=home_path, default=Path("predictions"),
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
    add_watch_options(predict)
    add_calibrate_parser(commands)
    add_serve_parser(commands)
    return top


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """``ad-runtime serve BUNDLE``: its options, with the help ``ad serve`` shows too."""
    from ad_runtime.serve import OPTION_HELP, ServeOptions

    serve = commands.add_parser(
        "serve", help="Serve a bundle over HTTP (FastAPI; pip install 'ad-runtime[serve]')."
    )
    serve.add_argument("bundle", type=Path, help="Bundle folder written by ad export.")
    defaults = ServeOptions()
    for name, kind in (("host", str), ("port", int), ("max_batch", int),
                       ("max_delay_ms", float), ("max_queue", int), ("max_bytes", int),
                       ("max_pixels", int), ("decode_threads", int)):  # fmt: skip
        flag = "--" + name.replace("_", "-")
        serve.add_argument(flag, type=kind, default=getattr(defaults, name), help=OPTION_HELP[name])
    serve.add_argument("--token-file", type=Path, default=None, help=OPTION_HELP["token_file"])
    serve.add_argument("--threshold", type=float, default=None, help=OPTION_HELP["threshold"])
    serve.add_argument(
        "--engine", choices=["onnxruntime", "openvino"], default=None,
        help=OPTION_HELP["engine"],
    )  # fmt: skip
    serve.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], default=None,
        help=OPTION_HELP["precision"],
    )  # fmt: skip
    serve.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"],
        default="info", help=OPTION_HELP["log_level"],
    )  # fmt: skip


def serve(args: argparse.Namespace) -> None:
    """Serve the bundle until Ctrl-C (:func:`ad_runtime.serve.serve`)."""
    from ad_runtime.serve import ServeOptions, read_token
    from ad_runtime.serve import serve as run_server

    token = None if args.token_file is None else read_token(args.token_file)
    options = ServeOptions(
        host=args.host, port=args.port, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        decode_threads=args.decode_threads, token=token, log_level=args.log_level,
    )  # fmt: skip
    run_server(args.bundle, options, args.threshold, args.engine, args.precision)


def add_watch_options(predict: argparse.ArgumentParser) -> None:
    """``--watch DIR`` and its bounds."""
    predict.add_argument(
        "--watch", type=Path, default=None, metavar="DIR",
        help="Score images as they appear in DIR, appending to scores.csv and scores.jsonl.",
    )  # fmt: skip
    predict.add_argument(
        "--watch-timeout", type=float, default=None, metavar="SECONDS",
        help="Stop watching after SECONDS without a new image (default: until Ctrl-C).",
    )  # fmt: skip
    predict.add_argument(
        "--max-images", type=int, default=None, metavar="N",
        help="Stop watching after N images (default: no limit).",
    )  # fmt: skip
    predict.add_argument(
        "--poll", type=float, default=0.5, metavar="SECONDS",
        help="Seconds between two looks at the watched folder (default: 0.5).",
    )  # fmt: skip


def add_calibrate_parser(commands: argparse._SubParsersAction) -> None:
    """``ad-runtime calibrate``: as ``ad calibrate --model``."""
    calibrate = commands.add_parser(
        "calibrate", help="Set the bundle's thresholds from good images: threshold.json."
    )
    calibrate.add_argument("bundle", type=Path, help="Bundle folder written by ad export.")
    calibrate.add_argument(
        "--normal", type=Path, action="append", required=True,
        help="Folder (or file) of good images (repeatable).",
    )  # fmt: skip
    calibrate.add_argument(
        "--defects", type=Path, action="append", default=[],
        help="Folder of labelled defect images (for --recall, --f1; repeatable).",
    )  # fmt: skip
    calibrate.add_argument(
        "--fpr", type=float, default=None,
        help="Target false-positive rate on good images (the default rule, at 0.001).",
    )  # fmt: skip
    calibrate.add_argument(
        "--quantile", type=float, default=None, help="Threshold at this quantile of good scores."
    )
    calibrate.add_argument("--recall", type=float, default=None, help="Target recall on defects.")
    calibrate.add_argument(
        "--f1", action="store_true", help="F1-optimal threshold over good and defect images."
    )
    calibrate.add_argument(
        "--pixel-fpr", type=float, default=0.001,
        help="Target rate of good map pixels at or above the pixel threshold (0: none).",
    )  # fmt: skip
    calibrate.add_argument(
        "--batch-size", type=int, default=8, help="Images per graph call (default: 8)."
    )
    calibrate.add_argument("--json", action="store_true", help="Print threshold.json's content.")


def calibrate(args: argparse.Namespace) -> None:
    """Score the good images, choose the thresholds, write threshold.json into the bundle."""
    from ad_runtime.calibration import calibrate_bundle, describe
    from ad_runtime.thresholds import parse_rule

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} is below 1.", "Pass 1 or more.")
    if not 0.0 <= args.pixel_fpr < 1.0:
        raise UsageError(f"--pixel-fpr {args.pixel_fpr:g} is outside [0, 1).", "Give e.g. 0.001.")
    rule = parse_rule(args.fpr, args.quantile, args.recall, args.f1, bool(args.defects))
    calibration, path = calibrate_bundle(
        args.bundle.expanduser(), [p.expanduser() for p in args.normal], rule,
        [p.expanduser() for p in args.defects], args.pixel_fpr or None, args.batch_size,
    )  # fmt: skip
    print(calibration.model_dump_json(indent=2) if args.json else describe(calibration, path))


def watch(args: argparse.Namespace, model: Model) -> None:
    """``predict --watch``: the watch loop over the bundle until one of its bounds."""
    from ad_runtime.watch import Watcher, check_bounds, describe

    check_bounds(args.watch_timeout, args.max_images, args.poll)

    def report(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    watcher = Watcher(
        args.watch.expanduser(), args.output.expanduser(), model.batches, model.verdicts,
        args.batch_size, not args.no_maps, args.poll, report,
        f"bundle {model.bundle.graph_sha256}",
    )  # fmt: skip
    outcome = watcher.run(args.watch_timeout, args.max_images)
    print(describe(outcome))


def predict(args: argparse.Namespace) -> None:
    """Score the images and write the outputs; prints a summary (or JSON) on stdout."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} is below 1.", "Pass 1 or more.")
    if (args.watch is None) == (not args.images):
        raise UsageError(
            "ad-runtime predict needs images or a folder to watch, not both.",
            "Give image files or folders, or --watch DIR.",
        )
    model = Model(args.bundle, args.threshold, engine=args.engine, precision=args.precision)
    if args.watch is not None:
        watch(args, model)
        return
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
        if args.command == "serve":
            serve(args)
        elif args.command == "calibrate":
            calibrate(args)
        else:
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
