"""``env.json``: what produced a run (versions, device, weights, seed)."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from adcore.plugins import Registry

LIBRARIES = ("torch", "torchvision", "numpy", "open_clip_torch", "timm", "faiss-cpu", "faiss-gpu")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_device(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def environment(registry: Registry, device: str) -> dict[str, Any]:
    """Versions of Python, the libraries and every loaded plugin distribution."""
    plugins = {p.distribution: p.version for p in registry.plugins}
    libraries = {name: v for name in LIBRARIES if (v := _version(name))}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {**plugins, **libraries},
        **describe_device(device),
    }
