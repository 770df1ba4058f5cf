"""The host's view of WinCLIP: the ``Method`` contract around :class:`WinClip`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ad_winclip.backbone import load_clip
from ad_winclip.model import WinClip, WinClipGraph
from adcore.api import (
    ConfigError,
    ExportableMethod,
    FitContext,
    PluginError,
    Prediction,
    Preprocessing,
    Runtime,
    upsample,
)


class WinClipMethod(ExportableMethod):
    """The host's view of WinCLIP: uint8 images in, scores and input-size maps out."""

    def __init__(
        self, model: WinClip, geometry: Preprocessing, runtime: Runtime, identity: dict[str, Any]
    ) -> None:
        self.model = model.to(runtime.device).eval()
        self.geometry = geometry
        self.runtime = runtime
        self.identity = identity
        self.class_name: str | None = None

    def fit(self, context: FitContext) -> None:
        self.model.reset_references()
        with torch.no_grad():
            self.model.set_class(context.class_name)
            self.class_name = context.class_name
            for batch in context.batches:
                self.model.add_references(self._normalize(batch))

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.geometry.normalize(images.to(self.runtime.device))

    def predict(self, images: torch.Tensor) -> Prediction:
        output = self.model(self._normalize(images))
        maps = upsample(output.maps.float(), self.geometry.output_size)
        return Prediction(scores=output.scores.float(), maps=maps)

    def export_module(self) -> nn.Module:
        """WinCLIP (WinCLIP+ once fitted with references) as one module."""
        if self.model.text_embeddings is None:
            raise PluginError("WinCLIP has nothing to export yet.", "Call fit first.")
        return WinClipGraph(self.model, self.geometry.output_size).eval()

    def modules(self) -> dict[str, nn.Module]:
        return {"clip": self.model.clip}

    def backbone_forward(self, images: torch.Tensor) -> Any:
        with self.runtime.backbone_autocast():
            return self.model.clip.visual(images).float()

    def weights_identity(self) -> dict[str, Any]:
        return dict(self.identity)

    def _state_tensors(self) -> list[torch.Tensor]:
        model = self.model
        tensors = [model.text_embeddings, model.patch_bank, *model.window_banks.values()]
        return [tensor for tensor in tensors if tensor is not None]

    def memory_bank_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self._state_tensors())

    def fitted_state(self) -> dict[str, Any]:
        model = self.model
        if model.text_embeddings is None:
            raise PluginError("WinCLIP has no fitted state yet.", "Call fit first.")
        return {
            "class_name": self.class_name,
            "text_embeddings": model.text_embeddings.cpu(),
            "patch_bank": None if model.patch_bank is None else model.patch_bank.cpu(),
            "window_banks": {str(k): bank.cpu() for k, bank in model.window_banks.items()},
        }

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        model, device = self.model, self.runtime.device
        model.text_embeddings = state["text_embeddings"].to(device)
        if state.get("class_name") is not None:
            self.class_name = state["class_name"]
            model.text_cache[self.class_name] = model.text_embeddings
        bank = state.get("patch_bank")
        model.patch_bank = None if bank is None else bank.to(device)
        model.window_banks = {int(k): v.to(device) for k, v in state["window_banks"].items()}


def build(config: Any, runtime: Runtime) -> WinClipMethod:
    """The plugin factory's body: weights, model and geometry from a ``WinClipConfig``."""
    clip, tokenizer, identity = load_clip(
        config.backbone, config.pretrained, config.resolution, runtime.seed, config.quick_gelu
    )
    grid = tuple(clip.visual.grid_size)
    too_big = [k for k in config.scales if k > min(grid)]
    if too_big:
        raise ConfigError(
            f"model.scales {too_big} do not fit the {grid[0]}x{grid[1]} patch grid of "
            f"{config.backbone} at resolution {config.resolution}.",
            f"Use window sizes from 1 to {min(grid)}.",
        )
    model = WinClip(
        clip,
        tokenizer,
        scales=config.scales,
        temperature=config.temperature,
        prompt_average=config.prompt_average,
        text_batch_size=config.text_batch_size,
        window_batch_size=config.window_batch_size,
        backbone_autocast=runtime.backbone_autocast,
    )
    import open_clip

    # open_clip's own preprocessing for this model: bicubic shorter side, then centre crop
    geometry = Preprocessing.from_open_clip(
        open_clip.get_model_preprocess_cfg(clip), config.resolution
    )
    return WinClipMethod(model, geometry, runtime, identity)
