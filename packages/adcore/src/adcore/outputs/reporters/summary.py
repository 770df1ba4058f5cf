"""Run summaries: raw CSV, pretty CSV and Markdown (percentages), and JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from adcore.infra.files import atomic_write_text, csv_text
from adcore.infra.precision import precision_note
from adcore.outputs.reporting import Reporter, RunContext
from adcore.outputs.results import NOTES_SEPARATOR, RunResult

RANDOM_NOTE = "Random weights: these numbers come from randomly initialised models (a demo)."
UNTRAINED_NOTE = (
    "Untrained method parameters: the method's trained parts (prompts, adaptors) were not "
    "loaded from a trained checkpoint; train them with `ad train` and set model.checkpoint."
)


def weights_line(identity: dict[str, Any] | None) -> str:
    """``Weights: resnet18, tag a1_in1k, digest 0f3a...``; ``random initialisation`` in
    place of the tag or file for a random backbone; nothing for weight-free methods."""
    if not identity or not identity.get("digest"):
        return ""
    if identity.get("source") in ("random", "none"):
        source = "random initialisation"
    else:
        source = f"{identity.get('source')} {identity.get('pretrained')}"
    parts = [str(identity.get("architecture")), source, f"digest {identity['digest']}"]
    if identity.get("checkpoint_digest"):
        parts.append(f"trained checkpoint digest {identity['checkpoint_digest']}")
    return f"Weights: {', '.join(parts)}.\n\n"


def summary_rows(result: RunResult) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows: one per category plus the macro ``mean`` row."""
    efficiency = sorted({k for r in result.categories for k in r.efficiency})
    header = ["category", *result.metric_names, *efficiency, "notes"]
    rows = [
        {
            "category": r.category,
            **r.metrics,
            **r.efficiency,
            "notes": NOTES_SEPARATOR.join(r.notes),
        }
        for r in result.categories
    ]
    undefined = [r.category for r in result.categories if any(map(math.isnan, r.metrics.values()))]
    mean_note = f"n/a where a category is n/a ({', '.join(undefined)})" if undefined else ""
    rows.append({"category": "mean", **result.mean(), "notes": mean_note})
    return header, rows


def pretty(name: str, value: Any, metric_names: list[str]) -> str:
    if not isinstance(value, float):
        return "" if value is None else str(value)
    if math.isnan(value):
        return "n/a"
    if name in metric_names:
        return f"{100 * value:.1f}"
    return f"{value:.4g}"


class SummaryCsvReporter(Reporter):
    """``summary_metrics.csv``: full-precision values for scripts."""

    def on_run(self, result: RunResult, context: RunContext) -> None:
        header, rows = summary_rows(result)
        text = csv_text(header, [[row.get(h, "") for h in header] for row in rows])
        atomic_write_text(context.run_dir / "summary_metrics.csv", text)


class PrettySummaryReporter(Reporter):
    """``summary_metrics_pretty.csv`` and ``.md``: metrics in percent, one decimal."""

    def on_run(self, result: RunResult, context: RunContext) -> None:
        header, rows = summary_rows(result)
        cells = [[pretty(h, row.get(h), result.metric_names) for h in header] for row in rows]
        atomic_write_text(context.run_dir / "summary_metrics_pretty.csv", csv_text(header, cells))
        title = f"# {result.method} on {result.dataset} ({result.experiment})\n\n"
        note = f"> {RANDOM_NOTE}\n\n" if result.random_weights else ""
        note += f"> {UNTRAINED_NOTE}\n\n" if result.untrained_parameters else ""
        note += weights_line(context.env.get("weights"))
        shown_precision = precision_note(context.env.get("precision"))
        note += f"{shown_precision}\n\n" if shown_precision else ""
        shown = header[:-1]  # notes go below the table, where they have room
        table = "| " + " | ".join(shown) + " |\n|" + "---|" * len(shown) + "\n"
        table += "".join("| " + " | ".join(row[:-1]) + " |\n" for row in cells)
        legend = "\nMetrics in percent; efficiency figures as measured (ms, images/s, MB).\n"
        notes = [f"- {r.category}: {n}" for r in result.categories for n in r.notes]
        if notes:
            legend += "\nNotes:\n\n" + "\n".join(notes) + "\n"
        atomic_write_text(
            context.run_dir / "summary_metrics_pretty.md", title + note + table + legend
        )


class JsonSummaryReporter(Reporter):
    """``summary.json``: the whole run result, with the environment."""

    def on_run(self, result: RunResult, context: RunContext) -> None:
        payload = json.loads(result.model_dump_json())
        payload["mean"] = {k: (None if math.isnan(v) else v) for k, v in result.mean().items()}
        payload["env"] = context.env
        atomic_write_text(
            context.run_dir / "summary.json", json.dumps(payload, indent=2, default=str) + "\n"
        )
