"""``ad report``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


class Layout(str, Enum):
    comparison = "comparison"
    paper = "paper"


def report_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders written by ad eval (results/<dataset>/<method>/<experiment>).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for report.md, report.csv, report.html, charts.")
    ] = Path("report"),
    layout: Annotated[
        Layout,
        typer.Option(
            "--layout",
            help="comparison: runs as columns, charts, HTML. paper: data sets as rows and the "
            "metrics as columns in the AF-CLIP authors' order (paper.md, paper.csv).",
        ),
    ] = Layout.comparison,
) -> None:
    """Compare runs side by side: tables, charts and overlays in Markdown, CSV and HTML."""
    out, run_dirs = out.expanduser(), [path.expanduser() for path in run_dirs]  # '~/x' quoted
    if layout is Layout.paper:
        from adcore.outputs.report.paper import write_paper_report

        written = write_paper_report(run_dirs, out)
    else:
        from adcore.outputs.report.compare import build_report

        written = build_report(run_dirs, out)
    console = Console()
    console.print(f"Compared {len(run_dirs)} run(s); wrote {len(written)} files.")
    console.print(f"Open {written[-1] if layout is Layout.paper else out / 'report.html'}")
