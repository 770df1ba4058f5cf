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
    "hookimpl": "adcore.contracts.hookspecs",
    "PluginConfig": "adcore.contracts.records",
    "EmptyConfig": "adcore.contracts.records",
    "Capability": "adcore.contracts.records",
    "MethodSpec": "adcore.contracts.records",
    "DatasetSpec": "adcore.contracts.records",
    "MetricSpec": "adcore.contracts.records",
    "ReporterSpec": "adcore.contracts.records",
    # errors
    "AdError": "adcore.infra.errors",
    "ConfigError": "adcore.infra.errors",
    "DataError": "adcore.infra.errors",
    "PluginError": "adcore.infra.errors",
    "WeightsError": "adcore.infra.errors",
    # methods
    "Method": "adcore.contracts.method",
    "TrainableMethod": "adcore.contracts.method",
    "ExportableMethod": "adcore.contracts.method",
    "TransductiveMethod": "adcore.contracts.method",
    "TrainingSettings": "adcore.contracts.method",
    "TrainingPhase": "adcore.contracts.method",
    "TrainingBatch": "adcore.contracts.method",
    "FitContext": "adcore.contracts.method",
    "Prediction": "adcore.contracts.method",
    "Runtime": "adcore.contracts.method",
    # preprocessing
    "Preprocessing": "ad_runtime.preprocessing",
    "IMAGENET_MEAN": "ad_runtime.preprocessing",
    "IMAGENET_STD": "ad_runtime.preprocessing",
    "CLIP_MEAN": "ad_runtime.preprocessing",
    "CLIP_STD": "ad_runtime.preprocessing",
    # data sets
    "Dataset": "adcore.contracts.dataset",
    "Sample": "adcore.contracts.dataset",
    "Split": "adcore.contracts.dataset",
    "GOOD": "adcore.contracts.dataset",
    "GOOD_NAMES": "adcore.contracts.dataset",
    "DataFiles": "adcore.contracts.dataset",
    "UNDECODABLE_EXTENSIONS": "ad_runtime.decoding",
    "IMAGE_EXTENSIONS": "ad_runtime.decoding",
    # metrics
    "EvalData": "adcore.metrics.evaldata",
    # reporters
    "Reporter": "adcore.outputs.reporting",
    "RunContext": "adcore.outputs.reporting",
    "CategoryOutputs": "adcore.outputs.reporting",
    "CategoryResult": "adcore.outputs.results",
    "RunResult": "adcore.outputs.results",
    "RunLayout": "adcore.outputs.results",
    # anomaly maps
    "anomaly_map": "adcore.toolkit.maps",
    "upsample": "adcore.toolkit.maps",
    "gaussian_blur": "adcore.toolkit.maps",
    # memory banks
    "nearest_neighbours": "adcore.toolkit.neighbors",
    "FlatL2Index": "adcore.toolkit.neighbors",
    # weights
    "parse_weights": "adcore.toolkit.weights",
    "load_checkpoint": "adcore.toolkit.weights",
    "file_digest": "adcore.toolkit.weights",
    "WeightsIdentity": "adcore.toolkit.weights",
    "backbone_identity": "adcore.toolkit.weights",
    "with_trained_parts": "adcore.toolkit.weights",
    "require_same_weights": "adcore.toolkit.weights",
    "read_checkpoint": "adcore.toolkit.checkpoints",
    "normalise_state": "adcore.toolkit.checkpoints",
    "fit_state": "adcore.toolkit.checkpoints",
    "hf_cache_dir": "adcore.toolkit.hub",
    "hub_file": "adcore.toolkit.hub",
    "url_file": "adcore.toolkit.hub",
    "captured_output": "adcore.infra.captured",
    "load_open_clip": "adcore.toolkit.openclip",
    "QuickGelu": "adcore.toolkit.openclip",
    "QUICK_GELU_HELP": "adcore.toolkit.openclip",
    "plain_block": "adcore.toolkit.vit_blocks",
    "residual_block": "adcore.toolkit.vit_blocks",
    # training
    "checkpoint_metadata": "adcore.run.training",
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
    from ad_runtime.decoding import IMAGE_EXTENSIONS, UNDECODABLE_EXTENSIONS  # noqa: F401
    from ad_runtime.preprocessing import (  # noqa: F401
        CLIP_MEAN,
        CLIP_STD,
        IMAGENET_MEAN,
        IMAGENET_STD,
        Preprocessing,
    )
    from adcore.contracts.dataset import GOOD, GOOD_NAMES, DataFiles, Dataset, Sample, Split  # noqa: F401
    from adcore.contracts.hookspecs import hookimpl  # noqa: F401
    from adcore.contracts.method import (  # noqa: F401
        ExportableMethod,
        FitContext,
        Method,
        Prediction,
        Runtime,
        TrainableMethod,
        TrainingBatch,
        TrainingPhase,
        TrainingSettings,
        TransductiveMethod,
    )
    from adcore.contracts.records import (  # noqa: F401
        Capability,
        DatasetSpec,
        EmptyConfig,
        MethodSpec,
        MetricSpec,
        PluginConfig,
        ReporterSpec,
    )
    from adcore.infra.captured import captured_output  # noqa: F401
    from adcore.infra.errors import (  # noqa: F401
        AdError,
        ConfigError,
        DataError,
        PluginError,
        WeightsError,
    )
    from adcore.metrics.evaldata import EvalData  # noqa: F401
    from adcore.outputs.reporting import CategoryOutputs, Reporter, RunContext  # noqa: F401
    from adcore.outputs.results import CategoryResult, RunLayout, RunResult  # noqa: F401
    from adcore.toolkit.checkpoints import fit_state, normalise_state, read_checkpoint  # noqa: F401
    from adcore.toolkit.hub import hf_cache_dir, hub_file, url_file  # noqa: F401
    from adcore.toolkit.maps import anomaly_map, gaussian_blur, upsample  # noqa: F401
    from adcore.toolkit.neighbors import FlatL2Index, nearest_neighbours  # noqa: F401
    from adcore.toolkit.openclip import QUICK_GELU_HELP, QuickGelu, load_open_clip  # noqa: F401
    from adcore.toolkit.trained import checkpoint_metadata  # noqa: F401
    from adcore.toolkit.vit_blocks import plain_block, residual_block  # noqa: F401
    from adcore.toolkit.weights import (  # noqa: F401
        WeightsIdentity,
        backbone_identity,
        file_digest,
        load_checkpoint,
        parse_weights,
        require_same_weights,
        with_trained_parts,
    )
