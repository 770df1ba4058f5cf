"""``ad report --layout paper``: one row per data set, the metrics as columns, in the order of
the AF-CLIP authors' result logs, so a run can be laid beside their table.

The authors' logs (github Faustinaqq/AF-CLIP, ``weight/train_on_mvtec_test_res.txt`` and
``train_on_visa_test_res.txt``) list the data sets as MVTec-AD, VisA, BTAD, DTD-Synthetic,
DAGM, ISIC, ClinicDB, ColonDB, BrainMRI, Br35H, Kvasir, and each one's mean over categories as
image AUROC, AP, max-F1, then pixel AUROC, AP, max-F1, PRO. A metric a data set cannot have
(no masks, or no normal image) is n/a. Values are each run's mean over its categories.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from adcore.infra.errors import AdError, DataError
from adcore.infra.files import atomic_write_text, csv_text, ensure_writable
from adcore.outputs.report.compare import RunSummary, percent, read_run

PAPER_DATASETS = {
    "mvtec": "MVTec-AD",
    "visa": "VisA",
    "btad": "BTAD",
    "dtd": "DTD-Synthetic",
    "dagm": "DAGM",
    "isic": "ISIC",
    "clinicdb": "CVC-ClinicDB",
    "colondb": "CVC-ColonDB",
    "brainmri": "BrainMRI",
    "br35h": "Br35H",
    "kvasir": "Kvasir",
}
PAPER_METRICS = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1_max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1_max": "pixel F1-max",
    "pro": "PRO",
}
CSV_NAME, MD_NAME = "paper.csv", "paper.md"


def trained_on(run: RunSummary) -> str:
    """The data set the run's ``model.checkpoint`` was trained on, from its training record."""
    from adcore.toolkit.trained import checkpoint_metadata

    config_file = run.run_dir / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    checkpoint = ((config or {}).get("model") or {}).get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        return ""
    try:
        record = checkpoint_metadata(Path(checkpoint))
    except AdError:
        return ""
    return str(((record.get("config") or {}).get("data") or {}).get("dataset", ""))


def run_notes(run: RunSummary) -> list[str]:
    """The distinct notes of a run's categories (why a metric is n/a), from summary.json."""
    path = run.run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    notes = [n for c in summary.get("categories", []) for n in c.get("notes", [])]
    return list(dict.fromkeys(notes))


def paper_order(runs: list[RunSummary]) -> list[RunSummary]:
    """Runs by method, then data sets in the authors' order (others after, by name)."""
    rank = {name: i for i, name in enumerate(PAPER_DATASETS)}
    return sorted(
        runs, key=lambda r: (r.method, rank.get(r.dataset, len(rank)), r.dataset, r.experiment)
    )


def paper_columns(runs: list[RunSummary]) -> list[str]:
    """The authors' seven metrics first, then any other metric a run has."""
    others = [m for run in runs for m in run.metric_names if m not in PAPER_METRICS]
    return [*PAPER_METRICS, *dict.fromkeys(others)]


def paper_rows(runs: list[RunSummary]) -> tuple[list[str], list[list[object]]]:
    """``(header, rows)``: method, data set, training set, experiment, then mean metrics."""
    metrics = paper_columns(runs)
    header = ["method", "dataset", "trained_on", "experiment", "random_weights", *metrics]
    rows: list[list[object]] = []
    for run in paper_order(runs):
        mean = run.values.get("mean", {})
        values = [mean.get(m, math.nan) for m in metrics]
        rows.append(
            [run.method, run.dataset, trained_on(run), run.experiment, run.random_weights, *values]
        )
    return header, rows


def paper_markdown(header: list[str], rows: list[list[object]]) -> str:
    metrics = header[5:]
    names = [PAPER_METRICS.get(m, m) for m in metrics]
    lines = ["# Results in the paper's layout", ""]
    if any(row[4] for row in rows):
        lines += ["> Random weights: some runs use randomly initialised models (a demo).", ""]
    lines += ["| method | data set | trained on | " + " | ".join(names) + " |"]
    lines += ["|" + "---|" * (3 + len(names))]
    for row in rows:
        method, dataset, source, _, random = row[:5]
        shown = PAPER_DATASETS.get(str(dataset), str(dataset))
        cells = [str(method) + (" (random weights)" if random else ""), shown, str(source or "-")]
        cells += [percent(float(str(v))) for v in row[5:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each data set's mean over its categories, in percent; n/a: the data set cannot have "
        "that metric (no masks, or no normal images) or the run did not compute it.",
        "",
    ]
    return "\n".join(lines)


def notes_markdown(runs: list[RunSummary]) -> str:
    """Each data set's reasons for n/a, once per data set."""
    lines, seen = [], set()
    for run in paper_order(runs):
        for note in run_notes(run):
            if (run.dataset, note) not in seen:
                seen.add((run.dataset, note))
                lines.append(f"- {PAPER_DATASETS.get(run.dataset, run.dataset)}: {note}")
    return "\n".join(["Why a value is n/a:", "", *lines, ""]) if lines else ""


def write_paper_report(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write ``paper.csv`` (full precision) and ``paper.md`` (percent) under ``out_dir``."""
    if not run_dirs:
        raise DataError("No run folders given.", "Pass one or more folders written by ad eval.")
    runs = [read_run(Path(d)) for d in run_dirs]
    header, rows = paper_rows(runs)
    ensure_writable(out_dir)
    atomic_write_text(out_dir / CSV_NAME, csv_text(header, rows))
    markdown = paper_markdown(header, rows) + "\n" + notes_markdown(runs)
    atomic_write_text(out_dir / MD_NAME, markdown.rstrip("\n") + "\n")
    return [out_dir / CSV_NAME, out_dir / MD_NAME]
