"""The import rules, checked by import-linter from the contracts in the root ``pyproject.toml``:
adcore's layers import only downwards, the layers never import the plugin-facing surface,
plugins reach the host only through ``adcore.api`` and never import each other, and there are
no import cycles anywhere (imports under ``if TYPE_CHECKING:`` included).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [str(LINT_IMPORTS), "--no-cache", *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_every_distribution_is_under_the_contracts():
    """A new plugin distribution must be named in the contracts, or nothing checks it; the
    runtime may import none of them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    packages = {
        path.name
        for src in [*ROOT.glob("packages/*/src"), *ROOT.glob("examples/*/src")]
        for path in src.iterdir()
        if (path / "__init__.py").is_file()
    }
    assert {"adcore", "ad_patchcore", "ad_plugin_example"} <= packages
    assert packages <= set(config["root_packages"]), packages - set(config["root_packages"])
    plugins = packages - {"adcore", "ad_runtime"}  # the host and the layer below it
    by_name = {c["name"]: c for c in config["contracts"]}
    runtime = next(c for c in config["contracts"] if c.get("source_modules") == ["ad_runtime"])
    assert set(runtime["forbidden_modules"]) == plugins | {"adcore"}
    assert set(by_name["plugins import only adcore.api from the host"]["source_modules"]) == plugins
    assert set(by_name["plugins never import each other"]["modules"]) == plugins


@pytest.mark.parametrize(
    ("import_line", "broken"),
    [
        ("from toy.top import thing", "layers"),  # the lower layer imports the upper one
        ("if TYPE_CHECKING:\n    from toy.top import thing", "layers"),  # only for types
        ("import os", None),
    ],
)
def test_the_contracts_catch_an_upward_import(tmp_path, import_line, broken):
    """The same kind of contracts on a two-layer toy package: an upward import, also one
    under ``TYPE_CHECKING``, breaks them; a clean tree keeps them."""
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("from toy import bottom\nthing = 1\n")
    (package / "bottom.py").write_text(
        "from typing import TYPE_CHECKING\n" + textwrap.dedent(import_line) + "\n"
    )
    (tmp_path / "setup.cfg").write_text(
        textwrap.dedent(
            """\
            [importlinter]
            root_package = toy

            [importlinter:contract:layers]
            name = layers
            type = layers
            layers =
                toy.top
                toy.bottom

            [importlinter:contract:cycles]
            name = cycles
            type = acyclic_siblings
            ancestors = toy
            """
        )
    )
    env_path = str(tmp_path)
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", "setup.cfg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": env_path, "PATH": str(LINT_IMPORTS.parent)},
    )
    if broken is None:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{broken} BROKEN" in result.stdout
