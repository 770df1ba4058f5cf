"""Everything a plugin needs from the host, in one place: ``from adcore.api import ...``.

Plugins import only from here, so the host can move its modules without breaking them. Names
resolve lazily (PEP 562): importing this module costs nothing, and a plugin's ``plugin.py``
that takes only records stays fast for ``ad list-plugins``; torch-backed helpers load on first
use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    # hooks and records
    "hookimpl": "adcore.hookspecs",
    "PluginConfig": "adcore.records",
    "EmptyConfig": "adcore.records",
    "Capability": "adcore.records",
    "MethodSpec": "adcore.records",
    "DatasetSpec": "adcore.records",
    "MetricSpec": "adcore.records",
    "ReporterSpec": "adcore.records",
    # errors
    "AdError": "adcore.errors",
    "ConfigError": "adcore.errors",
    "DataError": "adcore.errors",
    "PluginError": "adcore.errors",
    "WeightsError": "adcore.errors",
    # methods
    "Method": "adcore.method",
    "TrainableMethod": "adcore.method",
    "TrainingSettings": "adcore.method",
    "TrainingPhase": "adcore.method",
    "TrainingBatch": "adcore.method",
    "FitContext": "adcore.method",
    "Prediction": "adcore.method",
    "Runtime": "adcore.method",
    "InputGeometry": "adcore.method",
    # preprocessing
    "Preprocessing": "adcore.preprocessing",
    "IMAGENET_MEAN": "adcore.preprocessing",
    "IMAGENET_STD": "adcore.preprocessing",
    "CLIP_MEAN": "adcore.preprocessing",
    "CLIP_STD": "adcore.preprocessing",
    # data sets
    "Dataset": "adcore.dataset",
    "Sample": "adcore.dataset",
    "Split": "adcore.dataset",
    "GOOD": "adcore.dataset",
    "IMAGE_EXTENSIONS": "adcore.loading",
    # anomaly maps
    "anomaly_map": "adcore.maps",
    "upsample": "adcore.maps",
    "gaussian_blur": "adcore.maps",
    # memory banks
    "nearest_neighbours": "adcore.neighbors",
    "FlatL2Index": "adcore.neighbors",
    # weights
    "parse_weights": "adcore.weights",
    "load_checkpoint": "adcore.weights",
    "missing_weights": "adcore.weights",
    "file_digest": "adcore.weights",
    "tensors_digest": "adcore.weights",
    "WeightsIdentity": "adcore.weights",
    "backbone_identity": "adcore.weights",
    "with_trained_parts": "adcore.weights",
    "require_same_weights": "adcore.weights",
    "read_checkpoint": "adcore.checkpoints",
    "normalise_state": "adcore.checkpoints",
    "fit_state": "adcore.checkpoints",
    "hf_cache_dir": "adcore.hub",
    "hub_file": "adcore.hub",
    "url_file": "adcore.hub",
    "captured_output": "adcore.captured",
    "load_open_clip": "adcore.openclip",
    "QuickGelu": "adcore.openclip",
    "QUICK_GELU_HELP": "adcore.openclip",
    # training
    "checkpoint_metadata": "adcore.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"adcore.api has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and editors; never executed
    from adcore.captured import captured_output  # noqa: F401
    from adcore.checkpoints import fit_state, normalise_state, read_checkpoint  # noqa: F401
    from adcore.dataset import GOOD, Dataset, Sample, Split  # noqa: F401
    from adcore.errors import (  # noqa: F401
        AdError,
        ConfigError,
        DataError,
        PluginError,
        WeightsError,
    )
    from adcore.hookspecs import hookimpl  # noqa: F401
    from adcore.hub import hf_cache_dir, hub_file, url_file  # noqa: F401
    from adcore.loading import IMAGE_EXTENSIONS  # noqa: F401
    from adcore.maps import anomaly_map, gaussian_blur, upsample  # noqa: F401
    from adcore.method import (  # noqa: F401
        FitContext,
        InputGeometry,
        Method,
        Prediction,
        Runtime,
        TrainableMethod,
        TrainingBatch,
        TrainingPhase,
        TrainingSettings,
    )
    from adcore.neighbors import FlatL2Index, nearest_neighbours  # noqa: F401
    from adcore.openclip import QUICK_GELU_HELP, QuickGelu, load_open_clip  # noqa: F401
    from adcore.preprocessing import (  # noqa: F401
        CLIP_MEAN,
        CLIP_STD,
        IMAGENET_MEAN,
        IMAGENET_STD,
        Preprocessing,
    )
    from adcore.records import (  # noqa: F401
        Capability,
        DatasetSpec,
        EmptyConfig,
        MethodSpec,
        MetricSpec,
        PluginConfig,
        ReporterSpec,
    )
    from adcore.training import checkpoint_metadata  # noqa: F401
    from adcore.weights import (  # noqa: F401
        WeightsIdentity,
        backbone_identity,
        file_digest,
        load_checkpoint,
        missing_weights,
        parse_weights,
        require_same_weights,
        tensors_digest,
        with_trained_parts,
    )
