"""AF-CLIP and miniCLIP as :class:`adcore.api.TrainableMethod` s.

Both keep a frozen CLIP and a few trained parts; the trained parts load from our
safetensors checkpoints (a file, or an ``ad train`` run folder) or from the authors'
released files (``ad_afclip.released``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ad_afclip.checkpoint import released_parts, trained_parts
from ad_afclip.clip_models import load_clip_with_identity
from ad_afclip.losses import (
    dice_loss,
    focal_loss,
    l1_loss,
    patch_alignment_loss,
    released_focal_gradient,
    released_focal_loss,
)
from ad_afclip.miniclip import MiniCLIP, MiniCLIPGraph, MiniOutputs
from ad_afclip.model import AFCLIP, AFCLIPGraph, Outputs, grid_labels
from ad_afclip.prompts import af_tiny_alias
from adcore.api import (
    CLIP_MEAN,
    CLIP_STD,
    ExportableMethod,
    FitContext,
    Prediction,
    Preprocessing,
    Runtime,
    TrainableMethod,
    TrainingBatch,
    TrainingPhase,
    TrainingSettings,
    WeightsError,
    file_digest,
    parse_weights,
    with_trained_parts,
)

if TYPE_CHECKING:
    from ad_afclip.config import AFCLIPConfig, MiniCLIPConfig, SharedConfig


class AFCLIPMethod(TrainableMethod, ExportableMethod):
    """Zero-shot from the trained prompts and adaptor; few-shot adds a memory bank."""

    def __init__(self, config: AFCLIPConfig, runtime: Runtime) -> None:
        self.config: SharedConfig = config
        self.runtime = runtime
        # the authors' transforms: Resize((side, side), bicubic) on PIL images, CLIP
        # statistics; masks stretched bicubic too (soft: training targets from the soft
        # mask, evaluation ground truth soft > 0.5)
        self.geometry = Preprocessing(
            size=config.resolution,
            filter="bicubic",
            mask_filter="bicubic",
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )
        self._clip, self._backbone = load_clip_with_identity(
            config.backbone, config.pretrained, config.quick_gelu
        )
        # The trained parts start from the config's seed, whatever the global RNG holds.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = self._build(config)
        self.model.to(runtime.device).eval()
        self._trained = False
        self._checkpoint: Path | None = None
        self._released: list[Path] = []  # the authors' files, when those were loaded
        self.text: torch.Tensor | None = None  # [2, E] cached prompt features
        self.bank: torch.Tensor | None = None  # [S, M, C] unit-norm memory bank
        source = parse_weights(config.checkpoint)
        if not source.is_random:
            self.load_checkpoint_file(source.path)

    def _build(self, config: AFCLIPConfig) -> nn.Module:
        import open_clip

        return AFCLIP(
            self._clip,
            open_clip.get_tokenizer(config.backbone),
            resolution=config.resolution,
            layers=config.layers,
            radii=config.radii,
            sigma=config.aggregation_sigma,
            prompt_length=config.prompt_length,
            adaptor_heads=config.adaptor_heads,
            backbone_autocast=self.runtime.backbone_autocast,
        )

    # -- weights -------------------------------------------------------------------------

    released_format = "afclip"

    def load_checkpoint_file(self, path: Path) -> None:
        """Load trained parts from ``path`` (:mod:`ad_afclip.checkpoint`): the authors'
        released files, or an ``ad train`` checkpoint trained against this backbone."""
        epoch = self.config.checkpoint_epoch
        found = released_parts(path, self.released_format, epoch)
        if found is not None:
            state, files = found
            self.load_trainable_state(state, source=", ".join(str(f) for f in files))
            self._checkpoint, self._released = files[-1], files
            return
        state, path = trained_parts(path, epoch, self._backbone)
        self.load_trainable_state(state, source=str(path))
        self._checkpoint = path

    def weights_identity(self) -> dict[str, Any]:
        trained = self.trainable_state() if self._trained else None
        identity = with_trained_parts(self._backbone, trained, self._checkpoint)
        released_files = {str(f): file_digest(f) for f in self._released}
        return {
            **identity,
            "checkpoint_epoch": self.config.checkpoint_epoch,
            "released_files": released_files or None,
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
        config: AFCLIPConfig = self.config  # type: ignore[assignment]
        self.text = None  # the prompts change with every step
        self._trained = True
        out = self.model(self.geometry.normalize(images))
        target = grid_labels(masks, self.model.tower.grid)  # [B, h, w]
        image = self._image_focal(out, labels)
        map_focal = self._map_focal(out, target)
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

    def _image_focal(self, out: Outputs | MiniOutputs, labels: torch.Tensor) -> torch.Tensor:
        """The image focal loss: the released form on both logits (``fidelity:
        authors_code``, the log clamped at -100 by binary cross-entropy) or the paper's."""
        gamma = self.config.focal_gamma
        if self.config.fidelity == "authors_code" and out.image_logits is not None:
            return released_focal_loss(out.image_logits, labels, gamma)
        return focal_loss(out.image_logit, labels, gamma)

    def _map_focal(self, out: Outputs | MiniOutputs, target: torch.Tensor) -> torch.Tensor:
        """The map's focal loss; with ``fidelity: authors_code`` the released form on both
        logits and its gradient after the targets' rewrite (``released_focal_gradient``);
        with ``paper`` the focal loss of the logit difference."""
        gamma = self.config.focal_gamma
        if self.config.fidelity == "authors_code" and out.map_logits is not None:
            loss = released_focal_loss(out.map_logits, target, gamma)
            return loss + released_focal_gradient(out.map_logits, target, gamma)
        return focal_loss(out.map_logit, target, gamma)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in self.model.trainable().items()}

    def load_trainable_state(
        self, state: dict[str, torch.Tensor], source: str = "The checkpoint"
    ) -> None:
        own = self.model.trainable()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [
            f"{n} {tuple(state[n].shape)} != {tuple(own[n].shape)}"
            for n in own
            if n in state and tuple(state[n].shape) != tuple(own[n].shape)
        ]
        if missing or unexpected or wrong:
            raise WeightsError(
                f"{source} does not fit this model's trained parts (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}).",
                "Use trained parts of the same method and backbone (and prompt_length, "
                "adaptor_heads), e.g. ViT-L-14-336 for AF-CLIP's released files and "
                "TinyCLIP-ViT-8M-16-Text-3M for miniCLIP's.",
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
        scores, maps = self._graph(chunked=True)(self.geometry.normalize(images))
        return Prediction(scores=scores, maps=maps)

    def export_module(self) -> nn.Module:
        """The prediction as one module, its bank searched in one product per set."""
        return self._graph(chunked=False).eval()

    def _graph(self, chunked: bool) -> nn.Module:
        model: AFCLIP = self.model  # type: ignore[assignment]
        config = self.config
        return AFCLIPGraph(
            model,
            self._text(),
            self.bank,
            config.fewshot_weight,
            config.map_sigma,
            self.geometry.output_size,
            chunked,
        )

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


class MiniCLIPMethod(AFCLIPMethod):
    """af_tiny's miniCLIP: zero-shot with class-name prompts; trained in alternating
    textual and visual passes (``training_phases``). No few-shot path (af_tiny has none)."""

    released_format = "af_tiny"

    def __init__(self, config: MiniCLIPConfig, runtime: Runtime) -> None:
        self.alias: str | None = None
        super().__init__(config, runtime)  # type: ignore[arg-type]

    def _build(self, config: MiniCLIPConfig) -> nn.Module:  # type: ignore[override]
        import open_clip

        return MiniCLIP(
            self._clip,
            open_clip.get_tokenizer(config.backbone),
            resolution=config.resolution,
            layers=config.layers,
            radii=config.radii,
            sigma=config.aggregation_sigma,
            adapter_heads=config.adaptor_heads,
            backbone_autocast=self.runtime.backbone_autocast,
        )

    # -- training ------------------------------------------------------------------------

    def training_settings(self) -> TrainingSettings:
        settings = super().training_settings()
        config: MiniCLIPConfig = self.config  # type: ignore[assignment]
        return settings.model_copy(update={"keep_epochs": tuple(config.keep_epochs)})

    def training_phases(self, settings: TrainingSettings) -> list[TrainingPhase]:
        """af_tiny ``train``: each epoch a full textual pass (text adapter only), then a full
        visual pass (attention adapter + class-token projector), each with its own Adam."""
        model: MiniCLIP = self.model  # type: ignore[assignment]
        groups = {"textual": model.textual_parameters(), "visual": model.visual_parameters()}

        def phase(name: str) -> TrainingPhase:
            optimizer = torch.optim.Adam(
                groups[name], lr=settings.learning_rate, betas=settings.betas
            )

            def begin() -> None:  # af_tiny setup_training_phase
                for group, parameters in groups.items():
                    for parameter in parameters:
                        parameter.requires_grad_(group == name)

            return TrainingPhase(name, optimizer, self.training_step, begin)

        return [phase("textual"), phase("visual")]

    def training_step(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        """One batch of either phase (af_tiny ``textual_train`` / ``visual_train``)."""
        pairs = zip(batch.categories, batch.class_names, strict=True)
        aliases = [af_tiny_alias(category, name) for category, name in pairs]
        if not aliases:
            aliases = [af_tiny_alias("", "object")] * batch.images.shape[0]
        self.text = None
        self._trained = True
        model: MiniCLIP = self.model  # type: ignore[assignment]
        out = model(self.geometry.normalize(batch.images), aliases)
        return self.losses(out, batch.masks, batch.labels)

    def losses(
        self, out: MiniOutputs, masks: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """focal(image) + lambda1 (focal + L1)(map) + lambda2 alignment(fused patches)."""
        config = self.config
        target = grid_labels(masks, self.model.tower.grid)  # [B, h, w]
        image = self._image_focal(out, labels)
        map_focal = self._map_focal(out, target)
        map_l1 = l1_loss(out.map_logit, target)
        alignment = patch_alignment_loss(out.patch_features[None], target.flatten(1))
        loss = image + config.lambda1 * (map_focal + map_l1) + config.lambda2 * alignment
        return {
            "loss": loss,
            "image_focal": image,
            "map_focal": map_focal,
            "map_l1": map_l1,
            "alignment": alignment,
        }

    def training_loss(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Both phases' loss for images without categories (the generic object alias)."""
        return self.training_step(TrainingBatch(images, masks, labels))

    # -- detection -----------------------------------------------------------------------

    def _text(self) -> torch.Tensor:
        if self.text is None:
            model: MiniCLIP = self.model  # type: ignore[assignment]
            with torch.no_grad():
                self.text = model.encode_text([self.alias or "object"])[0].float()  # [2, E]
        return self.text

    def fit(self, context: FitContext) -> None:
        """Encode the category's two prompts; support images are not used (no few-shot)."""
        self.alias = af_tiny_alias(context.category, context.class_name)
        self.text = None
        self._text()
        self.bank = None

    def predict(self, images: torch.Tensor) -> Prediction:
        """uint8 [B,3,S,S] -> class-token scores [B], patch maps [B,S,S] (bilinear, sigma 4)."""
        scores, maps = self.export_module()(self.geometry.normalize(images))
        return Prediction(scores=scores, maps=maps)

    def export_module(self) -> nn.Module:
        model: MiniCLIP = self.model  # type: ignore[assignment]
        return MiniCLIPGraph(
            model, self._text(), self.config.map_sigma, self.geometry.output_size
        ).eval()

    def fitted_state(self) -> dict[str, Any]:
        return {"text": self._text().cpu(), "alias": self.alias}

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        self.text = state["text"].to(self.runtime.device)
        self.alias = state.get("alias")
        self.bank = None

    def modules(self) -> dict[str, nn.Module]:
        model: MiniCLIP = self.model  # type: ignore[assignment]
        return {
            "visual": model.tower,
            "text": model.text,
            "attn_adapter": model.attn_adapter,
            "cls_proj": model.cls_proj,
        }
