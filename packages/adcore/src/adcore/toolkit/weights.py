"""Where weights come from (a pretrained tag, a local file, or none) and the one identity a
run records for them.

Every method resolves its ``pretrained`` field here, so the three sources behave and fail
the same way everywhere. The identity is computed from the loaded tensors (names, shapes,
values), never from file bytes: the same weights saved plain, wrapped with ``module.``
prefixes or as safetensors, or fetched through a tag, are one identity. ``env.json``, the
summaries, the training resume check and the fitted-state check all use it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from adcore.infra.errors import WeightsError
from adcore.toolkit.checkpoints import read_checkpoint
from adcore.toolkit.hub import hf_cache_dir

RANDOM = "none"
DIGEST_LENGTH = 16


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


class WeightsIdentity(BaseModel):
    """What a method ran with; the same fields for every source and every method.

    ``digest``: SHA-256 (first 16 hex digits) over the backbone's loaded tensors.
    ``random_backbone``: the backbone was randomly initialised. ``untrained_parameters``:
    the method has trained parts (prompts, adaptors) and no trained checkpoint was loaded;
    ``checkpoint_digest`` identifies the trained tensors when one was.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    architecture: str | None
    source: Literal["tag", "file", "random", "none"]
    pretrained: str | None
    file: str | None = None
    digest: str | None
    random_backbone: bool
    untrained_parameters: bool = False
    checkpoint: str | None = None
    checkpoint_digest: str | None = None
    messages: list[str] = []


def backbone_identity(
    model_or_state: Any,
    *,
    architecture: str,
    source: WeightsSource,
    file: Path | None = None,
    messages: list[str] | None = None,
    **details: Any,
) -> dict[str, Any]:
    """The identity of a loaded backbone (an ``nn.Module`` or its state dict).

    ``file`` is where the tensors were read from (the cache file for a tag); ``details``
    adds architecture settings that change outputs (layers, QuickGELU).
    """
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    return WeightsIdentity(
        architecture=architecture,
        source=source.kind,
        pretrained=source.value,
        file=str(file) if file is not None else None,
        digest=tensors_digest(state),
        random_backbone=source.is_random,
        messages=list(messages or []),
        **details,
    ).model_dump()


def with_trained_parts(
    identity: dict[str, Any], trained: dict[str, Any] | None, checkpoint: Path | None
) -> dict[str, Any]:
    """``identity`` of a method with trained parts: ``trained`` tensors (None: untrained)."""
    return {
        **identity,
        "untrained_parameters": trained is None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "checkpoint_digest": tensors_digest(trained) if trained is not None else None,
    }


def is_random_backbone(identity: dict[str, Any]) -> bool:
    """Also reads the older ``random`` key that third-party methods may still return."""
    return bool(identity.get("random_backbone", identity.get("random", False)))


def has_untrained_parameters(identity: dict[str, Any]) -> bool:
    return bool(identity.get("untrained_parameters", False))


def identity_digest(identity: dict[str, Any] | None) -> str | None:
    """The backbone digest of an identity (older records: ``backbone_hash``)."""
    identity = identity or {}
    return identity.get("digest") or identity.get("backbone_hash")


def require_same_weights(
    recorded: dict[str, Any] | None, current: dict[str, Any], what: str, fix: str
) -> None:
    """Raise :class:`WeightsError` when both identities have a digest and they differ;
    ``what`` reads as the start of a sentence ("Checkpoint x.pt was trained")."""
    before, now = identity_digest(recorded), identity_digest(current)
    if before and now and before != now:
        recorded = recorded or {}
        raise WeightsError(
            f"{what} against backbone {recorded.get('architecture')} with weights "
            f"{recorded.get('pretrained')!r} (digest {before}), but this run uses "
            f"{current.get('architecture')} with {current.get('pretrained')!r} (digest {now}).",
            fix,
        )


def weights_flags(identity: dict[str, Any], random_switch: bool = False) -> dict[str, Any]:
    """``env.json``'s weights entries: the identity and the two separate warnings.

    ``random_weights`` (kept for older readers) and ``random_backbone``: the backbone was
    randomly initialised (``random_switch``: ``--random-weights`` was given).
    ``untrained_parameters``: the method's trained parts had no trained checkpoint.
    """
    random_backbone = random_switch or is_random_backbone(identity)
    return {
        "weights": identity,
        "random_weights": random_backbone,
        "random_backbone": random_backbone,
        "untrained_parameters": has_untrained_parameters(identity),
    }


FITTED_DIGEST = "weights_digest"


def stamp_fitted_state(state: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """A method's fitted state with the digest of the weights it was fitted with."""
    return {**state, FITTED_DIGEST: identity_digest(identity)}


def check_fitted_state(state: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    """Refuse a fitted state (memory bank, text features) made with other weights."""
    require_same_weights(
        {"digest": state.get(FITTED_DIGEST)},
        identity,
        f"The fitted state {path} was made",
        "Run with the weights of that run (and its seed, for random weights), or evaluate "
        "again with --save-model to fit it with these.",
    )


def missing_weights(model: str, tag: str, error: BaseException | str, how: str) -> WeightsError:
    """The one message for weights that could not be built after they were found."""
    return WeightsError(
        f"Weights {tag!r} for {model} could not be loaded ({error}). Cache: {hf_cache_dir()} "
        "(HF_HOME or HF_HUB_CACHE choose another).",
        f"{how} Or set model.pretrained to a local checkpoint file, or run with "
        "--random-weights for a demo with random initialisation.",
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A state dict from a file, read safely and unwrapped (:func:`checkpoints.read_checkpoint`)."""
    return read_checkpoint(path)


def file_digest(path: Path, length: int = DIGEST_LENGTH) -> str:
    """Short SHA-256 of a file's bytes (for files that are not weights, e.g. configs)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def tensors_digest(state: dict[str, Any], length: int = DIGEST_LENGTH) -> str:
    """SHA-256 over a state dict's names, shapes and values (dtype bytes as stored)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]
