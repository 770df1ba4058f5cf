"""`ad report`: tables with the best marked, charts, and an HTML page that links what exists."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import yaml
from PIL import Image

from adcore.outputs.report.compare import build_report
from adtest import eval_args, fast_flags, run_ad, write_mvtec_tree

METRICS = ["image_auroc", "pixel_auroc"]


def write_run(
    folder: Path,
    method: str,
    k_shot: int | str,
    rows: dict[str, dict[str, float]],
    random_weights: bool = False,
) -> Path:
    """A finished run's files, as ad eval writes them, with chosen numbers."""
    folder.mkdir(parents=True)
    header = ["category", *next(iter(rows.values()))]
    with (folder / "summary_metrics.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows([[name, *values.values()] for name, values in rows.items()])
    config = {
        "experiment": {"name": "default", "seed": 0},
        "data": {"dataset": "mvtec", "k_shot": k_shot},
        "model": {"name": method},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "env.json").write_text(json.dumps({"random_weights": random_weights}))
    (folder / "summary.json").write_text(json.dumps({"metric_names": METRICS}))
    return folder


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in {"href", "src"} and value]


def parse(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text())
    parser.close()
    return parser


def check_links(report: Path) -> Links:
    parsed = parse(report / "report.html")
    for link in parsed.links:
        if not link.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")):
            assert (report / link).is_file(), link
    return parsed


def test_tables_mark_the_best_value_per_row_and_label_random_weights(tmp_path):
    a = write_run(
        tmp_path / "a",
        "patchcore",
        1,
        {
            "plate": {"image_auroc": 0.9, "pixel_auroc": 0.8, "latency_ms_median": 20.0},
            "widget": {"image_auroc": 0.7, "pixel_auroc": 0.95, "latency_ms_median": 30.0},
            "mean": {"image_auroc": 0.8, "pixel_auroc": 0.875, "latency_ms_median": 25.0},
        },
    )
    b = write_run(
        tmp_path / "b",
        "winclip",
        0,
        {
            "plate": {"image_auroc": 0.6, "pixel_auroc": 0.85, "latency_ms_median": 10.0},
            "widget": {"image_auroc": 0.7, "pixel_auroc": 0.9, "latency_ms_median": 12.0},
            "mean": {"image_auroc": 0.65, "pixel_auroc": 0.875, "latency_ms_median": 11.0},
        },
        random_weights=True,
    )
    out = tmp_path / "report"
    written = build_report([a, b], out)
    names = {p.relative_to(out).as_posix() for p in written}
    assert names == {
        "report.md",
        "report.csv",
        "report.html",
        "charts/image_auroc.png",
        "charts/pixel_auroc.png",
        "charts/efficiency.png",
    }
    with (out / "report.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    labels = ["patchcore k=1", "winclip k=0 (random weights)"]
    assert list(rows[0]) == ["metric", "dataset", "category", *labels, "best", "note"]
    best = {(r["metric"], r["category"]): r["best"] for r in rows}
    assert best[("image_auroc", "plate")] == labels[0]
    assert best[("image_auroc", "widget")] == "; ".join(labels)  # a tie marks both
    assert best[("pixel_auroc", "plate")] == labels[1]
    assert best[("pixel_auroc", "mean")] == "; ".join(labels)
    assert best[("latency_ms_median", "mean")] == labels[1]  # lower is better
    assert float(rows[0][labels[0]]) == 0.9

    markdown = (out / "report.md").read_text()
    assert "| plate | **90.0** | 60.0 |" in markdown
    assert "| widget | **95.0** | 90.0 |" in markdown
    assert "latency_ms_median (lower is better) | 25 | **11** |" in markdown
    assert "(random weights)" in markdown.split("## Runs")[0]  # the warning comes first

    parsed = check_links(out)
    html_text = (out / "report.html").read_text()
    assert html_text.count("winclip k=0 (random weights)") >= 3  # runs, tables, gallery
    assert sum(link.startswith("data:image/png") for link in parsed.links) == 3  # the charts
    for chart in ("image_auroc", "pixel_auroc", "efficiency"):
        with Image.open(out / "charts" / f"{chart}.png") as image:
            assert image.format == "PNG" and image.size[0] >= 600


def test_means_are_compared_over_shared_categories_and_bookkeeping_is_not_ranked(tmp_path):
    """One run over 3 categories, one over 1: the mean row compares both over the one they
    share (by hand: 0.6 against 0.5), says so, and a run on categories the others lack is
    not ranked. latency_probe_iters and efficiency_seconds are shown, never bolded."""
    bookkeeping = {"latency_probe_iters": 3.0, "efficiency_seconds": 2.0}
    a = write_run(
        tmp_path / "a",
        "patchcore",
        1,
        {
            "plate": {"image_auroc": 0.6, "pixel_auroc": 0.7, **bookkeeping},
            "widget": {"image_auroc": 1.0, "pixel_auroc": 1.0, **bookkeeping},
            "screw": {"image_auroc": 1.0, "pixel_auroc": 1.0, **bookkeeping},
            "mean": {"image_auroc": 2.6 / 3, "pixel_auroc": 0.9, **bookkeeping},
        },
    )
    b = write_run(
        tmp_path / "b",
        "winclip",
        0,
        {
            "plate": {"image_auroc": 0.5, "pixel_auroc": 0.8, "latency_probe_iters": 9.0,
                      "efficiency_seconds": 1.0},
            "mean": {"image_auroc": 0.5, "pixel_auroc": 0.8, "latency_probe_iters": 9.0,
                     "efficiency_seconds": 1.0},
        },
    )  # fmt: skip
    out = tmp_path / "report"
    build_report([a, b], out)
    with (out / "report.csv").open() as stream:
        rows = {(r["metric"], r["category"]): r for r in csv.DictReader(stream)}
    labels = ["patchcore k=1", "winclip k=0"]
    mean = rows[("image_auroc", "mean")]
    assert float(mean[labels[0]]) == 0.6 and float(mean[labels[1]]) == 0.5  # plate only
    assert mean["best"] == labels[0] and "1 categories all runs have: plate" in mean["note"]
    assert rows[("pixel_auroc", "mean")]["best"] == labels[1]  # 0.8 > 0.7 on plate
    for name in ("latency_probe_iters", "efficiency_seconds"):
        assert rows[(name, "mean")]["best"] == ""
    markdown = (out / "report.md").read_text()
    assert "cover different categories (patchcore k=1: 3, winclip k=0: 1)" in markdown
    assert "| latency_probe_iters (how it was measured, not ranked)" in markdown
    assert "**3**" not in markdown and "**9**" not in markdown
    assert "cover different categories" in (out / "report.html").read_text()

    c = write_run(
        tmp_path / "c", "winclip", 1, {"cable": {"image_auroc": 0.9, "pixel_auroc": 0.9},
                                       "mean": {"image_auroc": 0.9, "pixel_auroc": 0.9}},
    )  # fmt: skip
    build_report([a, c], tmp_path / "apart")
    with (tmp_path / "apart" / "report.csv").open() as stream:
        rows = {(r["metric"], r["category"]): r for r in csv.DictReader(stream)}
    assert rows[("image_auroc", "mean")]["best"] == ""  # no shared category: not compared
    assert "not compared" in rows[("image_auroc", "mean")]["note"]


def test_ad_report_over_two_real_runs(tmp_path):
    data = write_mvtec_tree(tmp_path / "mvtec")
    runs = []
    for k_shot, name in (("2", "few"), ("all", "full")):
        result = run_ad(
            *eval_args(str(data), str(tmp_path / "out"), k_shot),
            "--set",
            f"experiment.name={name}",
            *fast_flags(),
            "--set",
            "visualization.save_overlay=true",
            "--set",
            "visualization.num_examples=5",
        )
        assert result.returncode == 0, result.stderr
        runs.append(tmp_path / "out/mvtec/pixel-gaussian" / name)
    out = tmp_path / "report"
    result = run_ad("report", *map(str, runs), "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("report.md", "report.csv", "report.html", "charts/efficiency.png"):
        assert (out / name).is_file(), name
    for metric in ("image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro"):
        assert (out / "charts" / f"{metric}.png").is_file()
        assert f"## {metric}" in (out / "report.md").read_text()
    with (out / "report.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert {r["category"] for r in rows} == {"plate", "widget", "mean"}
    summary = {}
    for run in runs:
        with (run / "summary_metrics.csv").open() as stream:
            summary[run.name] = {r["category"]: r for r in csv.DictReader(stream)}
    for row in rows:
        for label, run in (("pixel-gaussian k=2", "few"), ("pixel-gaussian k=all", "full")):
            expected = float(summary[run][row["category"]][row["metric"]])
            assert float(row[label]) == expected

    parsed = check_links(out)
    embedded = [link for link in parsed.links if link.startswith("data:image/")]
    # six charts, then four overlays (of five) per category and run
    assert len(embedded) == 6 + 2 * 2 * 4
    assert "table" in parsed.tags and "figure" in parsed.tags


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    result = run_ad("report", str(tmp_path), "--out", str(tmp_path / "r"))
    assert result.returncode == 1
    assert "not a finished run" in result.stderr and "Traceback" not in result.stderr
