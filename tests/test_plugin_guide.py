"""The plugin author's guide cannot rot: each block marked as an excerpt is the code of the
example plugin, which its own tests install and run (``examples/ad-plugin-example/tests``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
EXCERPT = re.compile(r"<!-- excerpt: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)```", re.S)


def test_every_excerpt_is_the_example_plugins_code():
    excerpts = list(EXCERPT.finditer(GUIDE.read_text()))
    files = {m["path"] for m in excerpts}
    assert {Path(f).name for f in files} >= {
        "pyproject.toml",
        "__init__.py",
        "model.py",
        "dataset.py",
        "metric.py",
        "reporter.py",
    }
    for match in excerpts:
        source = (ROOT / match["path"]).read_text()
        assert match["code"] in source, f"docs/plugins.md's excerpt of {match['path']} differs"


def test_the_guide_names_every_hook_and_the_readme_links_it():
    from adcore.plugins.registry import HOOKS

    text = GUIDE.read_text()
    assert all(hook in text for hook, _ in HOOKS.values())
    assert "](docs/plugins.md)" in (ROOT / "README.md").read_text()
