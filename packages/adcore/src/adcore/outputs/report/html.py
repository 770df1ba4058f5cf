"""``report.html``: one file that can be mailed around; charts and overlays are embedded.

Only the first few overlays of each category are embedded (as JPEG), to keep the file
small; the others stay in the run's ``<category>/overlays/`` folder, which the page names.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from adcore.outputs.report.rows import (
    Row,
    RunSummary,
    differing_categories,
    figure,
    figure_name,
    higher_is_better,
    percent,
    place_name,
    shown_best,
)

GALLERY_PER_CATEGORY = 4

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
td.best { font-weight: bold; background: #e3f4e1; }
tr.mean td { border-top: 2px solid #888; }
.random { color: #a15c00; }
.banner { background: #fff4d6; border-left: 5px solid #e0a000; padding: 0.6em 1em; }
.charts img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; width: 380px; font-size: 0.8em; }
.gallery img { width: 100%; border: 1px solid #ddd; }
code { font-size: 0.9em; }
"""


def embedded_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def embedded_jpeg(path: Path) -> str:
    """Overlays as JPEG in the page: a quarter of the PNG's bytes, no visible loss."""
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(run: RunSummary) -> str:
    css = ' class="random"' if run.random_weights else ""
    return f"<span{css}>{html.escape(run.label)}</span>"


def _table(runs: list[RunSummary], rows: list[Row], names: list[str], formatter) -> str:
    head = "".join(f"<th>{_label(run)}</th>" for run in runs)
    body = []
    for name, row in zip(names, rows, strict=True):
        best = shown_best(row, formatter)
        cells = "".join(
            f'<td class="best">{formatter(v)}</td>' if i in best else f"<td>{formatter(v)}</td>"
            for i, v in enumerate(row.values)
        )
        css = ' class="mean"' if row.category == "mean" else ""
        body.append(f"<tr{css}><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


def _runs_table(runs: list[RunSummary]) -> str:
    head = "<tr><th>run</th><th>method</th><th>data set</th><th>k-shot</th><th>seed</th>"
    head += "<th>weights</th><th>machine</th><th>folder</th></tr>"
    body = "".join(
        f"<tr><td>{_label(r)}</td><td>{html.escape(r.method)}</td>"
        f"<td>{html.escape(r.dataset)}</td><td>{html.escape(r.k_shot)}</td><td>{r.seed}</td>"
        f"<td>{'<b class=random>random</b>' if r.random_weights else 'as configured'}</td>"
        f"<td>{html.escape(r.machine)}</td>"
        f"<td><code>{html.escape(str(r.run_dir))}</code></td></tr>"
        for r in runs
    )
    return f"<table>{head}{body}</table>"


def _gallery(runs: list[RunSummary]) -> str:
    from adcore.outputs.reporters.overlay import overlay_files

    parts = []
    for run in runs:
        sections = []
        for category in run.categories:
            files = list(overlay_files(run.run_dir / category))
            if not files:
                continue
            figures = "".join(
                f'<figure><img src="{embedded_jpeg(p)}" alt="{html.escape(p.name)}">'
                f"<figcaption>{html.escape(p.name)}</figcaption></figure>"
                for p in files[:GALLERY_PER_CATEGORY]
            )
            more = len(files) - GALLERY_PER_CATEGORY
            note = (
                f"<p>{more} more in <code>{html.escape(str(run.run_dir / category / 'overlays'))}"
                "</code>.</p>"
                if more > 0
                else ""
            )
            sections.append(
                f"<h4>{html.escape(category)}</h4><div class=gallery>{figures}</div>{note}"
            )
        body = "".join(sections) or (
            "<p>No overlays: rerun with <code>--set visualization.save_overlay=true</code>.</p>"
        )
        parts.append(f"<h3>{_label(run)}</h3>{body}")
    return "".join(parts)


def report_html(
    runs: list[RunSummary], rows: list[Row], efficiency: list[Row], charts: list[Path]
) -> str:
    many = len({run.dataset for run in runs}) > 1
    parts = [
        "<!DOCTYPE html><html><head><meta charset=utf-8>",
        "<title>ad report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Comparison of anomaly detection runs</h1>",
    ]
    if any(run.random_weights for run in runs):
        parts.append(
            '<p class="banner"><b>Random weights:</b> runs marked '
            '<span class="random">(random weights)</span> used randomly initialised models; '
            "their numbers show the pipeline working, not the method's accuracy.</p>"
        )
    parts.append(
        '<p>Also as <a href="report.md">report.md</a> and <a href="report.csv">report.csv</a> '
        "(full precision). Metrics in percent; the best value of each row is highlighted.</p>"
    )
    parts.append("<h2>Runs</h2>" + _runs_table(runs))
    differing = differing_categories(runs)
    if differing:
        parts.append(f'<p class="banner">{html.escape(differing)}</p>')
    parts.append("<h2>Metrics</h2>")
    for metric in dict.fromkeys(row.metric for row in rows):
        chosen = [row for row in rows if row.metric == metric]
        direction = "higher is better" if higher_is_better(metric) else "lower is better"
        parts.append(f"<h3>{html.escape(metric)} <small>({direction})</small></h3>")
        parts.append(_table(runs, chosen, [place_name(r, many) for r in chosen], percent))
    if efficiency:
        names = [figure_name(r) for r in efficiency]
        parts.append("<h2>Efficiency <small>(mean over categories)</small></h2>")
        parts.append(_table(runs, efficiency, names, figure))
    parts.append('<h2>Charts</h2><div class="charts">')
    parts += [
        f'<img src="{embedded_png(chart)}" alt="{html.escape(chart.stem)} chart">'
        for chart in charts
    ]
    parts.append("</div><h2>Overlays</h2>")
    parts.append(
        "<p>Heatmaps of selected test images: the true defect outlined in green, the "
        "region predicted at the F1-optimal pixel threshold in blue.</p>"
    )
    parts.append(_gallery(runs))
    parts.append("</body></html>\n")
    return "\n".join(parts)
