"""PatchCore (Roth et al., CVPR 2022): the record and its settings; nothing heavy imported."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ad_patchcore.config import PatchCoreConfig
from adcore.api import Capability, MethodSpec, hookimpl

if TYPE_CHECKING:
    from adcore.api import Method, Runtime


def factory(config: PatchCoreConfig, runtime: Runtime) -> Method:
    """Build the method; timm, torch and faiss are imported only here."""
    from ad_patchcore.method import PatchCore

    return PatchCore(config, runtime)


@hookimpl
def adcore_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="patchcore",
            summary="PatchCore: locally aware patch features, greedy coreset memory bank, "
            "nearest-neighbour scores (Roth et al., CVPR 2022).",
            config=PatchCoreConfig,
            factory=factory,
            capabilities=frozenset(
                {Capability.FEW_SHOT, Capability.FULL_SHOT, Capability.EXPORTABLE}
            ),
            smoke_config={
                "backbone": "resnet18",
                "pretrained": "none",
                "resolution": 72,
                "crop": 64,
            },
        )
    ]
