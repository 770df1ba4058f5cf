"""open_clip models from a pretrained tag (Hugging Face cache), a local checkpoint file, or
random initialisation: the one loader of every CLIP-based method.

The weight file is found first (:mod:`adcore.toolkit.hub`: cache, then the network briefly),
then the model is built without weights and the file is loaded into it as open_clip's own
``load_checkpoint`` does (state-dict conversion, ``logit_scale`` shape, positional embedding
resized to the requested input size). OpenAI's CLIP weights need QuickGELU: the tags say so
in their config; for a local file it is detected (a TorchScript archive, OpenAI's extra
integer entries, or an OpenAI release file name), and ``quick_gelu`` overrides either way.

open_clip is imported only when a model is loaded; the method plugins that call this
depend on ``open_clip_torch`` themselves, so the host does not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from adcore.infra.captured import captured_output
from adcore.infra.errors import ConfigError
from adcore.infra.precision import sequence_major_self_attention
from adcore.toolkit.checkpoints import OPENAI_EXTRA_KEYS, fit_state, is_torchscript, read_checkpoint
from adcore.toolkit.checkpoints import strip_prefixes as strip
from adcore.toolkit.hub import hf_cache_dir, hub_file, url_file
from adcore.toolkit.weights import backbone_identity, parse_weights

QuickGelu = Literal["auto", True, False]
QUICK_GELU_HELP = (
    "QuickGELU activation: auto (the tag's setting; detected for a local OpenAI-style file: "
    "a TorchScript archive, OpenAI's integer entries or release file name), true or false"
)


def load_open_clip(
    backbone: str,
    pretrained: str | None,
    *,
    image_size: int | None = None,
    seed: int | None = None,
    strip_prefixes: Sequence[str] = (),
    quick_gelu: QuickGelu | str | bool = "auto",
) -> tuple[Any, dict[str, Any]]:
    """-> (open_clip CLIP in eval mode with every parameter frozen, weights identity).

    ``image_size`` builds the visual tower for that input (positional embedding resized);
    ``seed`` makes random initialisation independent of the global RNG; ``strip_prefixes``
    are wrapper prefixes removed from a file's keys (the first that matches) beyond the
    common ones (``module.``); ``quick_gelu``: ``auto`` (the tag's setting, or detected for a
    file), ``True`` or ``False``. Raises :class:`ConfigError` for an unknown architecture
    or tag, :class:`WeightsError` for weights that cannot be found, read or fitted.
    """
    import open_clip
    import torch

    if backbone not in open_clip.list_models():
        raise ConfigError(
            f"model.backbone {backbone!r} is not an open_clip architecture.",
            "Use a name from open_clip.list_models(), e.g. ViT-B-16-plus-240 or ViT-L-14-336.",
        )
    source = parse_weights(pretrained)
    path, state, detected = None, None, False
    if source.kind == "tag":
        path, detected = _tag_file(backbone, source.value)
    elif source.kind == "file":
        path = source.path
    if path is not None:
        state = strip(read_checkpoint(path, torchscript=True), strip_prefixes)
        detected = detected or (source.kind == "file" and openai_style(path, state))
    activation = _activation(quick_gelu, detected)
    messages: list[str] = []
    size = {"force_image_size": image_size} if image_size else {}
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng, captured_output(messages):
        if seed is not None:
            torch.manual_seed(seed)
        model = open_clip.create_model(backbone, pretrained=None, **activation, **size)
    if path is not None and state is not None:
        with captured_output(messages):
            _load(model, state, path, backbone)
    model.eval().requires_grad_(False)
    sequence_major_self_attention(model)  # CPU bf16 runs: no per-token weight copies
    identity = backbone_identity(
        model,
        architecture=backbone,
        source=source,
        file=path,
        messages=messages,
        quick_gelu=_model_quick_gelu(model),
    )
    return model, identity


def _activation(setting: QuickGelu | str | bool, detected: bool) -> dict[str, bool]:
    """``create_model`` keywords: QuickGELU when asked or detected; GELU only when asked
    (``auto`` otherwise keeps the architecture's own setting, e.g. ``*-quickgelu``)."""
    text = str(setting).strip().lower()
    if text in {"true", "1", "yes"} or (text == "auto" and detected):
        return {"quick_gelu": True}
    if text in {"false", "0", "no"}:
        return {"quick_gelu": False}
    return {}


def _model_quick_gelu(model: Any) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def _tag_file(backbone: str, tag: str) -> tuple[Path, bool]:
    """The tag's weight file (cache first) and whether the tag was trained with QuickGELU."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(backbone, tag)
    if not cfg:
        raise ConfigError(
            f"model.pretrained {tag!r} is not an open_clip tag for {backbone}.",
            f"Known tags: {open_clip.list_pretrained_tags_by_model(backbone) or 'none'}; "
            "or give a local checkpoint path, or 'none' for random weights.",
        )
    what = f"The open_clip weights {backbone!r} / {tag!r}"
    how = (
        'Fetch them once with network access (python -c "import open_clip; open_clip.'
        f"create_model('{backbone}', pretrained='{tag}')\"), or copy a cache that has them."
    )
    quick = bool(cfg.get("quick_gelu", False))
    if cfg.get("file"):
        return Path(cfg["file"]), quick
    if cfg.get("hf_hub"):
        # "org/repo/file.bin", or "org/repo/" for open_clip's default file name
        repo_id, filename = os.path.split(cfg["hf_hub"])
        names = _safe_first(filename or "open_clip_pytorch_model.bin")  # open_clip's default
        return hub_file(repo_id, names, what=what, how=how), quick
    url = cfg["url"]
    sha256 = url.split("/")[-2] if "openaipublic" in url else None
    if sha256 is None:
        raise ConfigError(
            f"{what} are published only as {url}, which has no checksum to verify.",
            "Download the file yourself and set model.pretrained to its path.",
        )
    target = hf_cache_dir() / url.rsplit("/", 1)[1]  # where open_clip put it for us before
    return url_file(url, target, sha256=sha256, what=what, how=how), quick


def _safe_first(filename: str) -> list[str]:
    """The names open_clip tries, in its order: the safetensors twin of a ``.bin``/``.pth``
    file first (``open_clip.pretrained._get_safe_alternatives``), then the file itself."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def openai_style(path: Path, state: dict[str, Any]) -> bool:
    """Whether a local file holds OpenAI's CLIP weights, which run with QuickGELU: a
    TorchScript archive, OpenAI's integer entries, or the name of an OpenAI release file."""
    import open_clip

    release_names = {
        url.rsplit("/", 1)[1]
        for model in open_clip.list_models()
        if (url := open_clip.get_pretrained_url(model, "openai"))
    }
    return (
        path.name in release_names
        or is_torchscript(path)
        or any(key in OPENAI_EXTRA_KEYS for key in state)
    )


def _load(model: Any, state: dict[str, Any], path: Path, backbone: str) -> None:
    """``state`` into ``model`` as open_clip's ``load_checkpoint`` massages it."""
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed

    for key in OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    state = convert_state_dict(model, state)
    for name in ("logit_scale", "logit_bias"):
        own = getattr(model, name, None)
        if name in state and own is not None and state[name].ndim != own.ndim:
            state[name] = state[name].reshape(own.shape)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    fit_state(model, state, path=path, architecture=f"the open_clip architecture {backbone}")
