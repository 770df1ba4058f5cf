"""Which device a run uses: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked before any work."""

from __future__ import annotations

from collections.abc import Callable

from adcore.infra.errors import ConfigError


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"model.device={requested} but this PyTorch sees no CUDA device.",
                "Use --device cpu (or auto), or install a CUDA build of PyTorch.",
            )
        index = torch.device(requested).index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"model.device={requested} but only {torch.cuda.device_count()} GPU(s) exist.",
                "Pick an existing index.",
            )
    return requested


def synchronizer(device: str) -> Callable[[], None]:
    """A call that waits for the device's queued work (a no-op on the CPU), for timing;
    torch is imported only for CUDA, so a torch-free timing (``ad bench --model``) stays so."""
    if device.startswith("cuda"):
        import torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None
