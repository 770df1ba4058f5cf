"""Frozen CLIP models through open_clip: built-in names, TinyCLIP, and local checkpoints.

TinyCLIP (Wu et al., ICCV 2023) is not an open_clip built-in; registering its architecture
with open_clip lets one loading path serve AF-CLIP's ViT-L/14@336 and miniCLIP alike.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ad_afclip.tinyclip import TINYCLIP_8M
from adcore.api import hf_cache_dir, load_open_clip, parse_weights, url_file

# Architecture of TinyCLIP-ViT-8M/16 Text-3M (TinyCLIP model zoo, open_clip JSON format),
# run with QuickGELU in every block as af_tiny's own CLIP does (TinyCLIP trained with GELU).
TINYCLIP_CONFIGS: dict[str, dict[str, Any]] = {
    TINYCLIP_8M: {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 10, "width": 256, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 256,
            "heads": 4,
            "layers": 3,
        },
    }
}


# Released checkpoints per (architecture, tag): URL and SHA-256 of the file.
TINYCLIP_RELEASES: dict[tuple[str, str], tuple[str, str]] = {
    (TINYCLIP_8M, "yfcc15m"): (
        "https://github.com/wkcn/TinyCLIP-model-zoo/releases/download/checkpoints/"
        "TinyCLIP-ViT-8M-16-Text-3M-YFCC15M.pt",
        "3d9f86a556cd13acc1aa6cc18495a79ffd1f58b6f17a552400bdefd244c3a92c",
    ),
}

# The TinyCLIP release wraps each tower in its own DDP module.
_WRAPPER_PREFIXES = ("_image_encoder.module.", "_text_encoder.module.", "_logit_scale.module.")


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make ``name`` an open_clip architecture (``open_clip.add_model_config``)."""
    import open_clip

    if name in open_clip.list_models():
        return
    folder = Path(tempfile.gettempdir()) / f"ad-open-clip-configs-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(config))
    os.replace(temporary, path)
    open_clip.add_model_config(path)


def _register_known() -> None:
    for name, config in TINYCLIP_CONFIGS.items():
        register_model_config(name, config)


def _tinyclip_release(backbone: str, tag: str) -> Path:
    """The released TinyCLIP file in the Hugging Face cache, checked against its published
    SHA-256 before every use and downloaded once (short timeouts) when absent."""
    url, sha256 = TINYCLIP_RELEASES[(backbone, tag)]
    path = hf_cache_dir() / "tinyclip" / url.rsplit("/", 1)[1]
    return url_file(
        url,
        path,
        sha256=sha256,
        what=f"The TinyCLIP weights {backbone!r} / {tag!r}",
        how=f"Download {url} into {path.parent} (SHA-256 {sha256}).",
    )


def load_clip(
    backbone: str, pretrained: str | None, quick_gelu: str | bool = "auto"
) -> torch.nn.Module:
    """An open_clip CLIP in eval mode with every parameter frozen (TinyCLIP included)."""
    return load_clip_with_identity(backbone, pretrained, quick_gelu)[0]


def load_clip_with_identity(
    backbone: str, pretrained: str | None, quick_gelu: str | bool = "auto"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """-> (open_clip CLIP in eval mode with every parameter frozen, weights identity);
    TinyCLIP included, its release tag resolved to the verified release file."""
    _register_known()
    if backbone in TINYCLIP_CONFIGS and str(quick_gelu).strip().lower() == "auto":
        # explicit every time: an architecture of this name registered first (with GELU)
        # must not change the activation of the authors' code
        quick_gelu = TINYCLIP_CONFIGS[backbone]["quick_gelu"]
    source = parse_weights(pretrained)
    if source.kind == "tag" and (backbone, source.value.lower()) in TINYCLIP_RELEASES:
        pretrained = str(_tinyclip_release(backbone, source.value.lower()))
    return load_open_clip(
        backbone, pretrained, strip_prefixes=_WRAPPER_PREFIXES, quick_gelu=quick_gelu
    )
