"""AF-CLIP / miniCLIP as an :class:`adcore.method.TrainableMethod`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ad_afclip.clip_models import load_clip
from ad_afclip.losses import dice_loss, focal_loss, l1_loss, patch_alignment_loss
from ad_afclip.model import AFCLIP, grid_labels, memory_scores
from ad_afclip.plugin import AFCLIPConfig
from adcore.api import (
    CLIP_MEAN,
    CLIP_STD,
    FitContext,
    InputGeometry,
    Prediction,
    Runtime,
    TrainableMethod,
    TrainingSettings,
    WeightsError,
    anomaly_map,
    checkpoint_metadata,
    file_digest,
    load_checkpoint,
    parse_weights,
    tensors_digest,
)


class AFCLIPMethod(TrainableMethod):
    """Zero-shot from the trained prompts and adaptor; few-shot adds a memory bank."""

    def __init__(self, config: AFCLIPConfig, runtime: Runtime) -> None:
        import open_clip

        self.config = config
        self.runtime = runtime
        self.geometry = InputGeometry(size=config.resolution, mean=CLIP_MEAN, std=CLIP_STD)
        self._clip = load_clip(config.backbone, config.pretrained)
        # The trained parts start from the config's seed, whatever the global RNG holds.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = AFCLIP(
                self._clip,
                open_clip.get_tokenizer(config.backbone),
                resolution=config.resolution,
                layers=config.layers,
                radii=config.radii,
                sigma=config.aggregation_sigma,
                prompt_length=config.prompt_length,
                adaptor_heads=config.adaptor_heads,
                backbone_autocast=runtime.backbone_autocast,
            )
        self.model.to(runtime.device).eval()
        self._backbone_hash: str | None = None
        self._trained = False
        self._checkpoint: Path | None = None
        self.text: torch.Tensor | None = None  # [2, E] cached prompt features
        self.bank: torch.Tensor | None = None  # [S, M, C] unit-norm memory bank
        source = parse_weights(config.checkpoint)
        if not source.is_random:
            self.load_checkpoint_file(source.path)

    # -- weights -------------------------------------------------------------------------

    def backbone_hash(self) -> str:
        """SHA-256 over the frozen CLIP's tensors: what a checkpoint was trained against."""
        if self._backbone_hash is None:
            self._backbone_hash = tensors_digest(self._clip.state_dict())
        return self._backbone_hash

    def load_checkpoint_file(self, path: Path) -> None:
        """Load trained prompts + adaptor, refusing ones trained against another backbone."""
        record = checkpoint_metadata(path)
        state = load_checkpoint(path)
        trained = (record.get("weights_identity") or {}).get("backbone_hash")
        if trained is not None and trained != self.backbone_hash():
            identity = record.get("weights_identity") or {}
            raise WeightsError(
                f"Checkpoint {path} was trained against backbone {identity.get('backbone')} "
                f"with weights {identity.get('pretrained')!r} (hash {trained}), but this run "
                f"uses {self.config.backbone} with {self.config.pretrained!r} "
                f"(hash {self.backbone_hash()}).",
                "Set model.backbone and model.pretrained to the ones it was trained with, or "
                "train a checkpoint for this backbone with `ad train`.",
            )
        self.load_trainable_state(state)
        self._checkpoint = path

    def weights_identity(self) -> dict[str, Any]:
        checkpoint = self._checkpoint
        return {
            "backbone": self.config.backbone,
            "pretrained": self.config.pretrained,
            "backbone_hash": self.backbone_hash(),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": file_digest(checkpoint) if checkpoint else None,
            "random": parse_weights(self.config.pretrained).is_random or not self._trained,
        }

    # -- training ------------------------------------------------------------------------

    def training_settings(self) -> TrainingSettings:
        config = self.config
        return TrainingSettings(
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            betas=config.betas,
            batch_size=config.batch_size,
            seed=config.seed,
        )

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.model.trainable().values())

    def training_loss(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """uint8 [B,3,H,W], float [B,H,W], long [B] -> loss and its parts (Sec. 3.4)."""
        config = self.config
        self.text = None  # the prompts change with every step
        self._trained = True
        out = self.model(self.geometry.normalize(images))
        target = grid_labels(masks, self.model.tower.grid)  # [B, h, w]
        image = focal_loss(out.image_logit, labels, config.focal_gamma)
        map_focal = focal_loss(out.map_logit, target, config.focal_gamma)
        second = dice_loss if config.map_loss == "dice" else l1_loss
        map_second = second(out.map_logit, target)
        alignment = patch_alignment_loss(out.patch_tokens, target.flatten(1))
        loss = image + config.lambda1 * (map_focal + map_second) + config.lambda2 * alignment
        return {
            "loss": loss,
            "image_focal": image,
            "map_focal": map_focal,
            f"map_{config.map_loss}": map_second,
            "alignment": alignment,
        }

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in self.model.trainable().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.model.trainable()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [n for n in own if n in state and tuple(state[n].shape) != tuple(own[n].shape)]
        if missing or unexpected or wrong:
            raise WeightsError(
                "The checkpoint does not hold this model's prompts and adaptor "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}).",
                "Use a checkpoint written by `ad train` for the same method, backbone, "
                "prompt_length and adaptor_heads.",
            )
        with torch.no_grad():
            for name, parameter in own.items():
                parameter.copy_(state[name].to(parameter.device, parameter.dtype))
        self._trained = True
        self.text = None

    # -- detection -----------------------------------------------------------------------

    def _text(self) -> torch.Tensor:
        if self.text is None:
            with torch.no_grad():
                self.text = self.model.prompts().float()
        return self.text

    def fit(self, context: FitContext) -> None:
        """Cache the prompt features; k normal images -> memory bank (none: zero-shot)."""
        self._text()
        parts = []
        with torch.no_grad():
            for batch in context.batches:
                tokens = self.model.aggregated_tokens(self.geometry.normalize(batch))
                parts.append(F.normalize(tokens[:, :, 1:].float(), dim=-1).flatten(1, 2))
        self.bank = torch.cat(parts, dim=1) if parts else None  # [S, k*N, C]

    def predict(self, images: torch.Tensor) -> Prediction:
        """uint8 [B,3,S,S] -> scores [B], maps [B,S,S] (few-shot: memory + w x zero-shot)."""
        aggregated = self.model.aggregated_tokens(self.geometry.normalize(images))
        out = self.model.score(aggregated, self._text())
        scores = torch.sigmoid(out.image_logit.float())
        maps = torch.sigmoid(out.map_logit.float())  # [B, h, w]
        if self.bank is not None:
            memory = memory_scores(aggregated[:, :, 1:], self.bank).reshape(maps.shape)
            weight = self.config.fewshot_weight
            scores = memory.flatten(1).amax(dim=1) + weight * scores
            maps = memory + weight * maps
        maps = anomaly_map(maps, self.geometry.output_size, self.config.map_sigma)
        return Prediction(scores=scores, maps=maps)

    def fitted_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"text": self._text().cpu()}
        if self.bank is not None:
            state["bank"] = self.bank.cpu()
        return state

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        self.text = state["text"].to(self.runtime.device)
        bank = state.get("bank")
        self.bank = bank.to(self.runtime.device) if bank is not None else None

    def memory_bank_bytes(self) -> int:
        return 0 if self.bank is None else self.bank.numel() * self.bank.element_size()

    def modules(self) -> dict[str, nn.Module]:
        return {
            "visual": self.model.tower,
            "prompts": self.model.prompts,
            "adaptor": self.model.adaptor,
        }

    def backbone_forward(self, images: torch.Tensor) -> Any:
        """The frozen ViT up to the deepest layer read, at the configured size."""
        with self.runtime.backbone_autocast():
            return self.model.tower(images).float()
