"""The ``musc`` method record: MuSc (Li et al., ICLR 2024), zero-shot and transductive.

Imports nothing heavy; ``factory`` loads torch, open_clip and the weights when a run needs them.

With the default weights (open_clip ViT-L-14-336, openai, 518 px) a run should approach the
paper's MVTec-AD image AUROC 97.8, pixel AUROC 97.3, PRO 93.8 and VisA 92.8, 98.8, 92.7.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ad_musc.config import MuscConfig
from adcore.api import Capability, MethodSpec, hookimpl

if TYPE_CHECKING:
    from adcore.api import Method, Runtime


def factory(config: MuscConfig, runtime: Runtime) -> Method:
    """Build the method; torch and open_clip are imported only here."""
    from ad_musc.method import Musc

    return Musc(config, runtime)


@hookimpl
def adcore_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="musc",
            summary="MuSc: zero-shot mutual scoring of the unlabelled test images (LNAMD, "
            "MSM, RsCIN) on CLIP patch tokens (Li et al., ICLR 2024).",
            config=MuscConfig,
            factory=factory,
            capabilities=frozenset({Capability.ZERO_SHOT, Capability.TRANSDUCTIVE}),
            not_exportable="transductive: each image's score depends on the whole test "
            "set it is scored with (mutual scoring, RsCIN), which a graph of one batch "
            "does not see",
            smoke_config={  # open_clip's small ViT-S/32, 12 blocks of 384, at 160 px (a 5 x 5 grid)
                "backbone": "ViT-S-32-alt",
                "pretrained": "none",
                "resolution": 160,
                "layers": [3, 6, 9, 12],
            },
        )
    ]
