"""Installed size of the set-up, with and without the Ray extra.

    .venv/bin/python benchmarks/install_size.py requirements.txt

Follows the dependency closure of every line of ``requirements.txt`` through the installed
distributions' metadata (extras included only where asked: ``adcore[ray]`` for the second
figure) and sums the sizes of the files each distribution's RECORD lists. Needs the set-up
installed with Ray, so that both closures can be read from one environment.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DISTS = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}


def installed_bytes(name: str) -> int:
    dist = DISTS[name]
    files = (Path(dist.locate_file(f)) for f in dist.files or [])
    return sum(path.stat().st_size for path in files if path.is_file())


def closure(roots: list[tuple[str, set[str]]]) -> set[str]:
    """Installed distributions reachable from ``roots`` (name, extras)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        if (name, frozenset(extras)) in seen or name not in DISTS:
            continue
        seen.add((name, frozenset(extras)))
        for text in DISTS[name].requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker and not any(marker.evaluate({"extra": e}) for e in [*extras, ""]):
                continue
            todo.append((canonicalize_name(requirement.name), set(requirement.extras)))
    return {name for name, _ in seen}


def requirement_roots(requirements: Path) -> list[tuple[str, set[str]]]:
    """(name, extras) of each line; ``-e path`` lines are named from their pyproject.toml."""
    roots = []
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-e "):
            folder = requirements.parent / re.sub(r"\[.*\]$", "", line[3:].strip())
            text = (folder / "pyproject.toml").read_text()
            roots.append((canonicalize_name(re.search(r'name = "([^"]+)"', text)[1]), set()))
        elif line:
            roots.append((canonicalize_name(Requirement(line).name), set()))
    return roots


def main() -> None:
    roots = requirement_roots(Path(sys.argv[1]))
    base, with_ray = closure(roots), closure([*roots, ("adcore", {"ray"})])
    for label, names in (("requirements.txt", base), ("  + adcore[ray]", with_ray)):
        total = sum(installed_bytes(n) for n in names) / 1e9
        print(f"{label}: {len(names)} distributions, {total:.2f} GB")
    added = sorted(with_ray - base, key=installed_bytes, reverse=True)
    print("Ray adds:", ", ".join(f"{n} {installed_bytes(n) / 1e6:.0f} MB" for n in added[:8]))
    largest = sorted(base, key=installed_bytes, reverse=True)[:6]
    print("largest:", ", ".join(f"{n} {installed_bytes(n) / 1e6:.0f} MB" for n in largest))


if __name__ == "__main__":
    main()
