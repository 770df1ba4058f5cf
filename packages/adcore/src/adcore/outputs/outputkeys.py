"""Names of per-image output files (maps, overlays, predictions): one per sample, never shared.

A sample's key is its image path relative to the deepest folder that all samples of the set
share, without the extension: ``good/000``, ``abnormal/lineA/000``, ``Anomaly/012``. Stems
repeat across sub-folders (production lines, defect types), paths do not; where two files
differ only by extension or letter case the extension is kept, and any remaining clash gets
a counter, so that no two samples can write the same file, even on case-insensitive disks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ad_runtime.outputkeys import unique_keys
from adcore.contracts.dataset import Sample
from adcore.infra.errors import OutputError


def relative_keys(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the deepest folder all share, extension dropped, made unique."""
    if not paths:
        return []
    base = os.path.commonpath([os.path.abspath(p.parent) for p in paths])
    relative = [Path(os.path.relpath(os.path.abspath(p), base)) for p in paths]
    return unique_keys(
        [r.with_suffix("").as_posix() for r in relative], [r.as_posix() for r in relative]
    )


def output_keys(samples: Sequence[Sample]) -> list[str]:
    """The output key of each sample of one category's split (see the module docstring)."""
    return relative_keys([s.image_path for s in samples])


def check_distinct(paths: Iterable[Path]) -> None:
    """Refuse before writing when two outputs would share a file (case-insensitively)."""
    seen: dict[str, Path] = {}
    for path in paths:
        folded = str(path).casefold()
        if folded in seen:
            raise OutputError(
                f"Two images would write the same output file {path} (and {seen[folded]}).",
                "This is a bug in ad's output naming; please report it with the two file names.",
            )
        seen[folded] = path
