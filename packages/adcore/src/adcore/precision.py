"""Reduced precision: which devices may run bf16/fp16, and the autocast around backbones.

``model.precision: bf16`` (or ``fp16`` on CUDA) runs a method's backbones - PatchCore's CNN,
the CLIP towers, WinCLIP's window passes - under ``torch.autocast``; everything after them
(scores, maps, nearest-neighbour search, metrics) stays fp32. Methods open
:func:`backbone_autocast` around their backbone forwards and cast the outputs back with
``.float()``; the host runs ``fit``/``predict`` inside :func:`fp32_region`, which switches
autocast off, so a caller's own autocast cannot leak into the parts that must stay fp32.

On a CPU, autocast to bf16 only pays off where matmuls run natively in bf16 (Intel AMX or
AVX512-BF16, AMD Zen 4+, Arm BF16); elsewhere oneDNN emulates it, slower than fp32, so such
CPUs are refused with a message rather than silently slowed down.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path
from typing import Any, Literal

from adcore.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]

# /proc/cpuinfo flags of native bf16 matmul units: Intel AMX, AVX512-BF16 (Intel, AMD Zen 4+),
# Arm's BF16 extension (``Features`` line on aarch64).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@functools.cache
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports (empty when none, or not on Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def precision_note(precision: str | None) -> str:
    """One line saying what a reduced-precision run changed; empty for fp32 (or unknown)."""
    if precision in (None, "fp32"):
        return ""
    return (
        f"Precision: {precision} backbones (autocast); scores, maps, nearest-neighbour search "
        "and metrics in fp32."
    )


def _device_type(device: str) -> str:
    return device.split(":", 1)[0]


def check_precision(device: str, precision: str) -> None:
    """Raise ``ConfigError`` when ``device`` cannot run ``precision`` natively.

    fp32 runs everywhere; bf16 on CUDA devices that support it and on CPUs with native bf16
    matmuls (:data:`BF16_CPU_FLAGS`); fp16 on CUDA only.
    """
    if precision == "fp32":
        return
    kind = _device_type(device)
    if kind == "cpu":
        if precision == "fp16":
            raise ConfigError(
                "model.precision fp16 is for CUDA devices; CPU autocast runs bf16 only.",
                "Set model.precision to bf16 (CPUs with AMX or AVX512-BF16) or fp32.",
            )
        if not cpu_bf16_flags():
            raise ConfigError(
                f"model.precision bf16 needs a CPU with native bf16 matmuls (AMX, AVX512-BF16 "
                f"or Arm BF16), and this {platform.machine() or 'CPU'} reports none of "
                f"{', '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo; emulated bf16 would be slower "
                "than fp32.",
                "Set model.precision to fp32 (the default), or run on a CUDA device with "
                "--device cuda.",
            )
        return
    if kind == "cuda":
        import torch

        if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"model.precision bf16 is not supported by {torch.cuda.get_device_name()}.",
                "Set model.precision to fp16 or fp32.",
            )
        return
    raise ConfigError(
        f"model.precision {precision} runs on CUDA devices and bf16-capable CPUs, not on "
        f"{device!r}.",
        "Set model.precision to fp32, or choose a cpu or cuda device.",
    )


def backbone_autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` on ``device`` for a backbone forward; fp32: a no-op.

    Matmuls and convolutions inside run in bf16/fp16 (PyTorch's autocast op lists);
    callers cast the outputs back with ``.float()``.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=_device_type(device), dtype=dtype)


def fp32_region(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off for ``device`` (reduced-precision runs only; fp32: a no-op)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=_device_type(device), enabled=False)
