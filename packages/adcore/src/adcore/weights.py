"""Where weights come from: a named pretrained tag, a local checkpoint file, or none.

Every method resolves its ``pretrained`` field here, so the three sources behave and fail
the same way everywhere, and a run can say exactly which weights it used.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adcore.errors import WeightsError

RANDOM = "none"


@dataclass(frozen=True)
class WeightsSource:
    """A parsed ``pretrained`` value."""

    kind: Literal["tag", "file", "random"]
    value: str

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    @property
    def path(self) -> Path:
        return Path(self.value).expanduser()


def parse_weights(value: str | None) -> WeightsSource:
    """``none``/empty -> random; an existing path or one that looks like a file -> file;
    anything else -> a named tag of the model zoo (open_clip, timm)."""
    if value is None or value.strip().lower() in {"", RANDOM, "random"}:
        return WeightsSource("random", RANDOM)
    text = value.strip()
    looks_like_file = (
        os.sep in text
        or text.startswith(".")
        or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
    )
    if looks_like_file or Path(text).expanduser().exists():
        return WeightsSource("file", text)
    return WeightsSource("tag", text)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache that open_clip and timm download into and read from."""
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def missing_weights(model: str, tag: str, error: BaseException | str, how: str) -> WeightsError:
    """The one message for weights that could not be found or fetched."""
    return WeightsError(
        f"Weights {tag!r} for {model} could not be loaded ({error}). They were looked for "
        f"in the Hugging Face cache {hf_cache_dir()} (set HF_HOME or HF_HUB_CACHE to use "
        "another cache).",
        f"{how} Or set model.pretrained to a local checkpoint file, or run with "
        "--random-weights for a demo with random initialisation.",
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a state dict safely (``weights_only=True``; safetensors when the suffix says so)."""
    if not path.is_file():
        raise WeightsError(
            f"Checkpoint file {path} does not exist.",
            "Check model.pretrained (or model.checkpoint), or download the file to that path.",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(
            f"Checkpoint {path} cannot be read ({type(error).__name__}: {error}).",
            "It must be a state dict saved with torch.save or safetensors; re-save it or "
            "point to another file.",
        ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(
            f"Checkpoint {path} holds a {type(state).__name__}, not a state dict.",
            "Save the model's state_dict() and point to that file.",
        )
    return state


def file_digest(path: Path, length: int = 16) -> str:
    """Short SHA-256 of a file, so results name the exact weights they came from."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def tensors_digest(state: dict[str, Any], length: int = 16) -> str:
    """SHA-256 over a state dict's names and values: identifies a frozen backbone."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]
