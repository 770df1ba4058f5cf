"""The runner stays an orchestrator: small, and only its public entry points used elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
RUNNER = PACKAGES / "adcore/src/adcore/run/runner.py"
PUBLIC = {"Evaluation", "RunOptions", "evaluate"}


def test_runner_is_under_300_lines():
    assert len(RUNNER.read_text().splitlines()) < 300


def test_other_modules_import_only_the_runners_entry_points():
    used = {}
    for path in PACKAGES.rglob("*.py"):
        if path == RUNNER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "adcore.run.runner":
                for alias in node.names:
                    used.setdefault(alias.name, []).append(path.name)
    assert used, "the commands run evaluations through the runner"
    assert set(used) <= PUBLIC, {k: v for k, v in used.items() if k not in PUBLIC}
