"""A weight-free transductive method, small enough to check the host's set path by hand:
each image's map is its distance to the mean of the *other* images of the set."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.method import FitContext, Prediction, TransductiveMethod


def leave_one_out_maps(grey: torch.Tensor) -> torch.Tensor:
    """[N,S,S] brightness in [0, 1] -> [N,S,S] |x_i - mean_{j != i} x_j| (N >= 2)."""
    total = grey.sum(0, keepdim=True)
    others = (total - grey) / (len(grey) - 1)
    return (grey - others).abs()


class SetContrast(TransductiveMethod):
    """Scores a set jointly; keeps one [S,S] brightness plane per image (grows with N)."""

    def __init__(self, size: int = 32) -> None:
        self.geometry = Preprocessing(size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.set_sizes: list[int] = []  # the sizes of the sets it was given, for the tests

    def fit(self, context: FitContext) -> None:
        pass

    def predict_set(self, batches: Iterable[torch.Tensor], size: int) -> Prediction:
        grey = torch.cat([b.double().mean(1) / 255 for b in batches])  # [N,S,S]
        assert len(grey) == size, (len(grey), size)
        self.set_sizes.append(size)
        maps = leave_one_out_maps(grey) if size > 1 else torch.zeros_like(grey)
        return Prediction(scores=maps.flatten(1).amax(1).float(), maps=maps.float())

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def backbone_forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(1)

    def weights_identity(self) -> dict:
        from adcore.toolkit.weights import WeightsIdentity

        return WeightsIdentity(
            architecture=None, source="none", pretrained=None, digest=None, random_backbone=False
        ).model_dump()

    def fitted_state(self) -> dict:
        return {"method": "set-contrast"}  # nothing is fitted: the set is the reference

    def load_fitted_state(self, state: dict) -> None:
        pass
