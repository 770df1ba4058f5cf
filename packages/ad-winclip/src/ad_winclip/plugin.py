"""The ``winclip`` method record: WinCLIP (zero-shot) and WinCLIP+ (few-shot) on open_clip.

Imports nothing heavy; ``factory`` loads torch, open_clip and the weights when a run needs them.

With the default weights (ViT-B-16-plus-240, laion400m_e31, 240 px) a run should approach the
paper's numbers (Jeong et al., CVPR 2023): MVTec-AD zero-shot image AUROC 91.8, pixel AUROC
85.1, PRO 64.6; VisA zero-shot 78.1, 79.6, 56.8; MVTec-AD 1-shot image / pixel AUROC
93.1 / 95.2.
"""

from __future__ import annotations

from typing import Any

from ad_winclip.config import WinClipConfig
from adcore.api import Capability, MethodSpec, hookimpl


def factory(config: WinClipConfig, runtime: Any) -> Any:
    """Build the method: weights, model, geometry (heavy imports happen here)."""
    from ad_winclip.method import build

    return build(config, runtime)


@hookimpl
def adcore_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="winclip",
            summary="WinCLIP / WinCLIP+ (CVPR 2023): CLIP window scores with prompt ensembles.",
            config=WinClipConfig,
            factory=factory,
            capabilities=frozenset(
                {Capability.ZERO_SHOT, Capability.FEW_SHOT, Capability.EXPORTABLE}
            ),
            smoke_config={"backbone": "ViT-S-32-alt", "pretrained": "none", "resolution": 224},
        )
    ]
