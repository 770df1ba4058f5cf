"""The ``anomalydino`` method record: AnomalyDINO (Damm et al., WACV 2025) on timm DINOv2.

Imports nothing heavy; ``factory`` loads torch, timm and the weights when a run needs them.

With the default weights (ViT-S/14, lvd142m, 448 px, "agnostic" preprocessing) a run should
approach the paper's MVTec-AD 1-shot image AUROC of 96.6.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ad_dino.config import AnomalyDinoConfig
from adcore.api import Capability, MethodSpec, hookimpl

if TYPE_CHECKING:
    from adcore.api import Method, Runtime


def factory(config: AnomalyDinoConfig, runtime: Runtime) -> Method:
    """Build the method; torch and timm are imported only here."""
    from ad_dino.method import AnomalyDino

    return AnomalyDino(config, runtime)


@hookimpl
def adcore_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="anomalydino",
            summary="AnomalyDINO: DINOv2 patch features of a few references (rotated), PCA "
            "background masking, nearest-neighbour cosine distances (Damm et al., WACV 2025).",
            config=AnomalyDinoConfig,
            factory=factory,
            capabilities=frozenset(
                {Capability.FEW_SHOT, Capability.FULL_SHOT, Capability.EXPORTABLE}
            ),
            natural_k_shot=1,
            smoke_config={  # timm's own tiny test ViT (patch 16, 64 wide, 6 blocks)
                "backbone": "test_vit",
                "pretrained": "none",
                "resolution": 64,
                "masking": "on",
            },
        )
    ]
