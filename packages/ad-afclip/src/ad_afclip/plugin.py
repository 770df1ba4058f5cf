"""AF-CLIP and miniCLIP: method records and settings (no heavy imports here).

AF-CLIP (Fang, Lv, Su, ACM MM 2025, arXiv 2507.19949) trains a small adaptor and state
prompts on an auxiliary data set, then detects zero-shot (and few-shot with a memory bank)
on others. miniCLIP (github suniverse77/miniCLIP, ``af_tiny``) adapts it to
TinyCLIP-ViT-8M/16: a residual attention adapter, a class-token projector, class-name prompts
with a text adapter, and training that alternates textual and visual passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ad_afclip.config import AFCLIPConfig, MiniCLIPConfig
from adcore.api import Capability, MethodSpec, hookimpl

if TYPE_CHECKING:
    from adcore.api import Runtime


def build(config: AFCLIPConfig, runtime: Runtime) -> Any:
    """Factory: imports torch and open_clip only when a method is built."""
    from ad_afclip.method import AFCLIPMethod

    return AFCLIPMethod(config, runtime)


def build_mini(config: MiniCLIPConfig, runtime: Runtime) -> Any:
    """Factory of miniCLIP."""
    from ad_afclip.method import MiniCLIPMethod

    return MiniCLIPMethod(config, runtime)


CAPABILITIES = frozenset(
    {Capability.ZERO_SHOT, Capability.FEW_SHOT, Capability.TRAINABLE, Capability.EXPORTABLE}
)
MINI_CAPABILITIES = frozenset(  # af_tiny: no few-shot
    {Capability.ZERO_SHOT, Capability.TRAINABLE, Capability.EXPORTABLE}
)


@hookimpl
def adcore_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="afclip",
            summary="AF-CLIP: CLIP with trained adaptor and state prompts (zero/few-shot)",
            config=AFCLIPConfig,
            factory=build,
            capabilities=CAPABILITIES,
            smoke_config={
                "backbone": "ViT-S-32-alt",
                "pretrained": "none",
                "resolution": 224,
                "layers": [3, 6, 9, 12],
            },
        ),
        MethodSpec(
            name="miniclip",
            summary="miniCLIP (af_tiny): TinyCLIP-8M/16 with adapters and class-name prompts",
            config=MiniCLIPConfig,
            factory=build_mini,
            capabilities=MINI_CAPABILITIES,
            smoke_config={"pretrained": "none", "resolution": 224},
        ),
    ]
