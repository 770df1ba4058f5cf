"""What every benchmark script prints and how it compares two sides.

Each script starts with :func:`print_machine` (the CPU model, its vector extensions, torch's
threads and the load, the same line ``ad bench`` prints) and ends with it again, so a figure
always says which CPU and which load it came from. Two sides are compared in alternating
pairs (A, B, A, B, ...), and the comparison is the min / median / max of the per-pair ratios
(:func:`pair_ratios`): a pair runs moments apart, so load that comes and goes slows both of
its halves alike, and the spread of the ratios says how far the figure can be trusted.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def machine() -> dict[str, Any]:
    """:func:`adcore.outputs.env.describe_machine`: CPU, extensions, threads, load now."""
    from adcore.outputs.env import describe_machine

    return describe_machine()


def print_machine(when: str = "before") -> dict[str, Any]:
    """Print ``Machine (before): <CPU> (<extensions>), ..., load a / b / c`` and return it."""
    from adcore.outputs.env import machine_summary

    described = machine()
    print(f"Machine ({when}): {machine_summary({'machine': described})}", flush=True)
    return described


def pair_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """Min / median / max of ``numerators[i] / denominators[i]`` over the pairs.

    ``numerators`` and ``denominators`` are times of the same pairs, in the order they ran;
    raises ``ValueError`` when they differ in length or are empty.
    """
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"{len(numerators)} against {len(denominators)} times: need pairs")
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return {
        "min": min(ratios),
        "median": statistics.median(ratios),
        "max": max(ratios),
        "pairs": len(ratios),
    }


def shown_ratios(ratios: dict[str, float] | None) -> str:
    """``1.21x (1.18-1.25, 5 pairs)``: the median, then the min and max; ``-`` for none."""
    if not ratios:
        return "-"
    return (
        f"{ratios['median']:.2f}x ({ratios['min']:.2f}-{ratios['max']:.2f}, "
        f"{ratios['pairs']} pairs)"
    )
