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

from adcore.infra.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]

# /proc/cpuinfo flags of native bf16 matmul units: Intel AMX, AVX512-BF16 (Intel, AMD Zen 4+),
# Arm's BF16 extension (``Features`` line on aarch64).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


# /proc/cpuinfo flags of the vector units matmul speed depends on, and the names people know
# them by (x86 AVX2, AVX-512, AVX512-BF16, AMX; Arm NEON and BF16).
VECTOR_EXTENSIONS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_tile", "AMX"),
    ("asimd", "NEON"),
    ("bf16", "BF16"),
)


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """Every flag of the ``flags`` (x86) or ``Features`` (Arm) lines; empty off Linux."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports (empty when none, or not on Linux)."""
    flags = cpu_flags(cpuinfo)
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def cpu_vector_extensions(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The vector extensions of :data:`VECTOR_EXTENSIONS` this CPU reports, by their names
    (``("AVX2", "AVX-512", "AVX512-BF16", "AMX")``); empty when unknown."""
    flags = cpu_flags(cpuinfo)
    return tuple(name for flag, name in VECTOR_EXTENSIONS if flag in flags)


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


def sequence_major_self_attention(model: Any) -> None:
    """Lay out self-attention inputs sequence-major under CPU autocast, for every batch-first
    ``nn.MultiheadAttention`` in ``model`` (open_clip's blocks); other runs are untouched.

    Such a module transposes its [B, L, D] input to [L, B, D] and projects it with
    ``F.linear``. Under autocast a ViT's tokens arrive in bf16 (its patch embedding ran in
    bf16) while the weights are fp32, which rules out the fused fast path; with frozen
    weights ``matmul`` then turns the non-contiguous 3-D projection into a ``bmm`` over L
    with the weight broadcast to [L, D, 3D], which PyTorch's CPU bf16 ``bmm`` materialises:
    L copies of the weight per block. A ViT-B-16 block on 2 x 1370 bf16 tokens took
    3770-4666 ms that way against 124-153 ms with this layout (fp32: 381-431 ms); AF-CLIP at
    518 px ran 11x slower in bf16 than in fp32 at batch 4, while batch 1, whose transpose
    is free, was fast. A forward pre-hook hands the module the same values stored as
    [L, B, D], so its own transpose is contiguous and the projection is one matrix product.
    """
    import torch
    from torch import nn

    def relaid(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        names = ("query", "key", "value")
        given = [args[i] if i < len(args) else kwargs.get(name) for i, name in enumerate(names)]
        query = given[0]
        if (
            not isinstance(query, torch.Tensor)
            or query.dim() != 3
            or query.device.type != "cpu"
            or not torch.is_autocast_enabled("cpu")
            or any(tensor is not query for tensor in given[1:])  # self-attention only
        ):
            return None
        same = query.transpose(0, 1).contiguous().transpose(0, 1)  # [B, L, D], stored L-major
        positional = tuple(same if i < 3 else a for i, a in enumerate(args))
        keywords = {k: same if k in names else v for k, v in kwargs.items()}
        return positional, keywords

    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention) and module.batch_first:
            module.register_forward_pre_hook(relaid, with_kwargs=True)
