"""A weight-free trainable method, small enough to check the training loop by hand; used in
process and, through a written plugin distribution, by the `ad train` command."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.method import (
    FitContext,
    Prediction,
    TrainableMethod,
    TrainingSettings,
)


class PixelLogistic(TrainableMethod):
    """A per-pixel logistic model on brightness: small enough to check the loop by hand."""

    def __init__(self) -> None:
        self.geometry = Preprocessing(size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.head = nn.Conv2d(3, 1, 1)
        self.frozen = nn.Linear(2, 2)
        for parameter in self.frozen.parameters():
            parameter.requires_grad_(False)
        with torch.no_grad():
            self.head.weight.fill_(0.0)
            self.head.bias.fill_(0.0)

    def training_settings(self) -> TrainingSettings:
        return TrainingSettings(epochs=3, learning_rate=0.5, betas=(0.5, 0.999), batch_size=4)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.head.parameters())

    def training_loss(self, images, masks, labels):
        logits = self.head(self.geometry.normalize(images))[:, 0]  # [B, H, W]
        pixel = nn.functional.binary_cross_entropy_with_logits(logits, masks)
        image = nn.functional.binary_cross_entropy_with_logits(
            logits.flatten(1).amax(dim=1), labels.float()
        )
        return {"loss": pixel + image, "pixel": pixel, "image": image}

    def trainable_state(self):
        return {k: v.detach().clone() for k, v in self.head.state_dict().items()}

    def load_trainable_state(self, state):
        self.head.load_state_dict(state)

    def fit(self, context: FitContext) -> None:
        return None

    def predict(self, images):
        logits = self.head(self.geometry.normalize(images))[:, 0]
        return Prediction(scores=logits.flatten(1).amax(dim=1), maps=logits)

    def modules(self):
        return {"head": self.head}

    def backbone_forward(self, images):
        return self.head(images)

    def weights_identity(self):
        return {"backbone": "pixel-logistic", "backbone_hash": "abc", "random": True}
