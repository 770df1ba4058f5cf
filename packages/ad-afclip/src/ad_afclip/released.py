"""The authors' released trained files, read without running their code.

- AF-CLIP (github Faustinaqq/AF-CLIP ``main.py``): ``<dataset>_prompt.pt`` holds the learned
  context (a Parameter [1, L, D]) and ``<dataset>_adaptor.pt`` the whole pickled ``Adaptor``
  module (``torch.save(module)``).
- miniCLIP (github suniverse77/miniCLIP ``af_tiny/main.py``): ``<epoch>_<dataset>_textual.pt``
  = ``{"text_adapter": state_dict}`` and ``<epoch>_<dataset>_visual.pt`` =
  ``{"attn_adapter": state_dict, "cls_proj": state_dict}``, saved at epochs 6, 8, 10, 12.

Files load with ``torch.load(weights_only=True)``: a pickled module's classes are replaced by
an inert record of their attributes, so nothing from the file is executed, and its parameters
are gathered by their dotted names. Names are then mapped onto ours (``attention.attn.to_q``
-> ``to_q``, ``to_out.0`` -> ``to_out``, ...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from adcore.api import WeightsError

# Classes a pickled AF-CLIP adaptor refers to (their clip/adaptor.py and torch.nn).
_PICKLED_MODULES = (
    "clip.adaptor.Adaptor",
    "clip.adaptor.BasicTransformerBlock",
    "clip.adaptor.CrossAttention",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.normalization.LayerNorm",
)
_AF_TINY = re.compile(r"^(?P<epoch>\d+)_(?P<dataset>.+)_(?P<part>textual|visual)\.pt$")
_AFCLIP = re.compile(r"^(?P<dataset>.+)_(?P<part>prompt|adaptor)\.pt$")


class PickledModule:
    """An inert stand-in for a pickled ``nn.Module``: it only keeps the pickled attributes."""


def read_torch_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU; pickled modules become
    :class:`PickledModule` records."""
    stand_ins = [(PickledModule, name) for name in _PICKLED_MODULES]
    try:
        with torch.serialization.safe_globals([*stand_ins, set]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(
            f"{path} cannot be read as a released AF-CLIP or miniCLIP file "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}).",
            "Point model.checkpoint to the authors' files as released, or to a checkpoint "
            "written by `ad train`.",
        ) from None


def module_state(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict (or a :class:`PickledModule` tree) -> flat {dotted name: tensor}."""
    if isinstance(value, PickledModule):
        state = {}
        for name, tensor in (vars(value).get("_parameters") or {}).items():
            if tensor is not None:
                state[prefix + name] = tensor.detach()
        for name, child in (vars(value).get("_modules") or {}).items():
            state.update(module_state(child, f"{prefix}{name}."))
        return state
    if isinstance(value, dict):
        return {prefix + k: v.detach() for k, v in value.items() if isinstance(v, torch.Tensor)}
    return {}


def attention_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' ``attention.attn.to_q`` / ``attention.norm`` / ``to_out.0`` -> ours."""
    renamed = {}
    for name, tensor in state.items():
        name = name.removeprefix("attention.").removeprefix("attn.")
        renamed[name.replace("to_out.0.", "to_out.")] = tensor
    return renamed


def _pick(path: Path, pattern: re.Pattern[str], what: str) -> list[re.Match[str]]:
    if path.is_dir():
        matches = [m for p in sorted(path.iterdir()) if (m := pattern.match(p.name))]
    else:
        match = pattern.match(path.name)
        matches = [match] if match else []
    if not matches:
        raise WeightsError(
            f"{path} holds no {what}.",
            "Point model.checkpoint to the authors' run folder or one of its files, or to a "
            "checkpoint written by `ad train`.",
        )
    return matches


def af_tiny_pair(path: Path, epoch: int | None) -> tuple[Path, Path, int]:
    """Run folder or one ``<epoch>_<dataset>_{textual,visual}.pt`` -> (textual, visual, epoch).

    ``epoch`` picks one of several saved epochs (default: the latest, as the authors'
    ``test.sh`` evaluates); a folder with files of several data sets needs one file named.
    """
    folder = path if path.is_dir() else path.parent
    matches = _pick(path, _AF_TINY, "miniCLIP <epoch>_<dataset>_textual.pt/_visual.pt files")
    datasets = sorted({m["dataset"] for m in matches})
    if len(datasets) > 1:
        raise WeightsError(
            f"{path} holds miniCLIP files trained on several data sets ({', '.join(datasets)}).",
            f"Point model.checkpoint to one file, e.g. {folder / matches[-1].string}.",
        )
    epochs = sorted({int(m["epoch"]) for m in matches})
    if epoch is None:
        epoch = epochs[-1]
    elif epoch not in epochs:
        raise WeightsError(
            f"{path} has no miniCLIP files of epoch {epoch} (it has {epochs}).",
            f"Set model.checkpoint_epoch to one of {epochs}.",
        )
    textual = folder / f"{epoch}_{datasets[0]}_textual.pt"
    visual = folder / f"{epoch}_{datasets[0]}_visual.pt"
    for needed in (textual, visual):
        if not needed.is_file():
            raise WeightsError(
                f"{needed} is missing: miniCLIP needs both files of an epoch.",
                "Copy the textual and the visual file of the same epoch into one folder.",
            )
    return textual, visual, epoch


def load_af_tiny(textual: Path, visual: Path) -> dict[str, torch.Tensor]:
    """The pair -> our miniCLIP trainable state (``text_adapter.*``, ``attn_adapter.*``,
    ``cls_proj.*``); an older layout (learned prompt, ``cls_adapter``) is refused by name."""
    text, image = read_torch_file(textual), read_torch_file(visual)
    if not isinstance(text, dict) or "text_adapter" not in text:
        keys = sorted(text) if isinstance(text, dict) else type(text).__name__
        raise WeightsError(
            f"{textual} holds {keys}, not the text adapter af_tiny saves today "
            "({'text_adapter': ...}); it comes from an earlier layout of that repository.",
            "Use files written by af_tiny's current main.py (e.g. weight/small-alter-prompt2).",
        )
    if not isinstance(image, dict) or not {"attn_adapter", "cls_proj"} <= set(image):
        keys = sorted(image) if isinstance(image, dict) else type(image).__name__
        raise WeightsError(
            f"{visual} holds {keys}, not af_tiny's {{'attn_adapter', 'cls_proj'}}.",
            "Use files written by af_tiny's current main.py (e.g. weight/small-alter-prompt2).",
        )
    state = module_state(text["text_adapter"], "text_adapter.")
    state.update(
        {
            f"attn_adapter.{k}": v
            for k, v in attention_names(module_state(image["attn_adapter"])).items()
        }
    )
    state.update(module_state(image["cls_proj"], "cls_proj."))
    return state


def afclip_pair(path: Path) -> tuple[Path, Path]:
    """Folder or one ``<dataset>_prompt.pt`` / ``<dataset>_adaptor.pt`` -> (prompt, adaptor)."""
    folder = path if path.is_dir() else path.parent
    matches = _pick(path, _AFCLIP, "AF-CLIP <dataset>_prompt.pt/_adaptor.pt files")
    datasets = sorted({m["dataset"] for m in matches})
    if len(datasets) > 1:
        raise WeightsError(
            f"{path} holds AF-CLIP files trained on several data sets ({', '.join(datasets)}).",
            f"Point model.checkpoint to one file, e.g. {folder / matches[0].string}.",
        )
    prompt = folder / f"{datasets[0]}_prompt.pt"
    adaptor = folder / f"{datasets[0]}_adaptor.pt"
    for needed in (prompt, adaptor):
        if not needed.is_file():
            raise WeightsError(
                f"{needed} is missing: AF-CLIP needs the prompt and the adaptor file.",
                "Copy both files of one data set into one folder.",
            )
    return prompt, adaptor


def load_afclip(prompt: Path, adaptor: Path) -> dict[str, torch.Tensor]:
    """The pair -> our AF-CLIP trainable state (``prompts.context``, ``adaptor.*``)."""
    context = read_torch_file(prompt)
    if not isinstance(context, torch.Tensor):
        raise WeightsError(
            f"{prompt} holds a {type(context).__name__}, not AF-CLIP's learned context tensor.",
            "Use the <dataset>_prompt.pt file as released with AF-CLIP.",
        )
    module = read_torch_file(adaptor)
    state = attention_names(module_state(module))
    if not state:
        raise WeightsError(
            f"{adaptor} holds no adaptor parameters.",
            "Use the <dataset>_adaptor.pt file as released with AF-CLIP.",
        )
    return {"prompts.context": context.detach(), **{f"adaptor.{k}": v for k, v in state.items()}}


def released_format(path: Path) -> str | None:
    """'af_tiny', 'afclip' or None (ours) for a model.checkpoint path."""
    names = [p.name for p in path.iterdir()] if path.is_dir() else [path.name]
    if any(_AF_TINY.match(name) for name in names):
        return "af_tiny"
    if any(_AFCLIP.match(name) for name in names):
        return "afclip"
    return None
