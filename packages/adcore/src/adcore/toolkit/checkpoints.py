"""Checkpoint files as state dicts: read safely, unwrapped the same way for every method, and
fitted into a model with a precise account of what does not fit.

Files are read with ``weights_only=True`` (safetensors by suffix). OpenAI's original CLIP
releases are TorchScript archives; where a caller allows it they are read as open_clip
reads them (``torch.jit.load`` and the archive's ``state_dict()``), anything else that is
not plain tensors is refused with one paragraph on how to re-save it.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adcore.infra.errors import WeightsError

# Keys under which training scripts commonly nest the model's tensors, outermost first.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "net")
# Prefixes added by DataParallel / DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Integer entries of OpenAI's CLIP archives that are not parameters.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
RESAVE = (
    "Re-save it as a plain state dict where it was made, e.g. "
    "torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file(...); "
    "for a file you trust, load it once with torch.load(path, weights_only=False) and save "
    "just its tensors that way."
)


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip holding ``constants.pkl``), as torch decides."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_checkpoint(path: Path, *, torchscript: bool = False) -> dict[str, Any]:
    """The tensors a file holds, unwrapped (:func:`normalise_state`).

    ``torchscript`` allows TorchScript archives (OpenAI's CLIP files). Raises
    :class:`WeightsError` for a missing file, a file that is not tensors, or a refused
    archive, naming what the file holds and how to re-save it.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Checkpoint file {path} does not exist.",
            "Check model.pretrained (or model.checkpoint), or copy the file to that path.",
        )
    if is_torchscript(path):
        if not torchscript:
            raise WeightsError(
                f"Checkpoint {path} is a TorchScript archive (a compiled model with code), "
                "which this backbone does not load.",
                RESAVE.replace("where it was made", "after torch.jit.load(path)"),
            )
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice
            warnings.simplefilter("ignore")
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        return normalise_state(dict(state), path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(_unreadable(path, error), RESAVE) from None
    return normalise_state(state, path)


def _unreadable(path: Path, error: Exception) -> str:
    text = " ".join(str(error).split())
    if "Unsupported global" in text or "weights_only" in text.lower():
        name = text.split("Unsupported global:", 1)[-1].split()[1:2] if "global" in text else []
        held = f" (e.g. {name[0].rstrip('.,')})" if name else ""
        return (
            f"Checkpoint {path} holds Python objects beyond tensors{held}; it is not loaded, "
            "because unpickling them could run arbitrary code."
        )
    return f"Checkpoint {path} cannot be read as tensors ({type(error).__name__}: {text[:200]})."


def normalise_state(state: Any, path: Path | str = "checkpoint") -> dict[str, Any]:
    """Unwrap ``{"state_dict": ...}``-style containers and strip wrapper prefixes.

    Prefixes (``module.``, ``_orig_mod.``) are removed only where every key carries them, so
    a model whose own top module is called ``module`` keeps its names.
    """
    for key in WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(
            f"Checkpoint {path} holds {_describe(state)}, not a state dict of named tensors.",
            RESAVE,
        )
    state = dict(state)
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def strip_prefixes(state: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Remove the first matching prefix of each key (e.g. a release's per-tower wrappers)."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), "")
        out[key[len(prefix) :]] = value
    return out


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an empty mapping" if not value else f"a mapping with keys {list(value)[:5]}"
    return f"a {type(value).__name__}"


def fit_state(
    model: Any,
    state: Mapping[str, Any],
    *,
    path: Path | str,
    architecture: str,
    ignore_unexpected: bool = False,
) -> None:
    """``model.load_state_dict`` with every mismatch named: the first missing and unexpected
    keys and each shape mismatch. ``ignore_unexpected`` accepts extra tensors (a classifier
    head a feature extractor does not run). Raises :class:`WeightsError`."""
    import torch

    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if ignore_unexpected:
        unexpected = []
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (file vs model: {'; '.join(shapes[:3])})")
        raise WeightsError(
            f"Checkpoint {path} does not fit {architecture}: {'; '.join(parts)}.",
            "Set model.backbone to the architecture the file was saved from, or point to a "
            "file of this architecture.",
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)
