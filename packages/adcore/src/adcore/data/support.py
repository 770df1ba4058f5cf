"""The support set: which normal training images a method may see in ``fit``."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np

from adcore.contracts.dataset import Sample
from adcore.infra.errors import ConfigError


def choose_support(
    train: Sequence[Sample], k_shot: int | Literal["all"], seed: int, category: str
) -> list[Sample]:
    """k normal images drawn without replacement, reproducibly from (seed, category).

    ``k_shot=0`` gives none (zero-shot); ``"all"`` every training image (full-shot). The
    category enters the seed so categories do not share the same draw positions.
    """
    normal = [s for s in train if s.label == 0]
    if k_shot == "all":
        return list(normal)
    if k_shot == 0:
        return []
    if k_shot > len(normal):
        raise ConfigError(
            f"data.k_shot={k_shot} but category {category!r} has only {len(normal)} normal "
            "training images.",
            f"Use data.k_shot <= {len(normal)}, or 'all' for full-shot.",
        )
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    chosen = rng.choice(len(normal), size=k_shot, replace=False)
    return [normal[i] for i in sorted(chosen)]
