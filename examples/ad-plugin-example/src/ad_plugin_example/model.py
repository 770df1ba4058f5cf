"""Each pixel of a normal image is modelled as an independent Gaussian per channel; the
anomaly map is the squared Mahalanobis distance, summed over channels, lightly blurred."""

import torch
import torch.nn.functional as F

from adcore.api import ExportableMethod, FitContext, PluginError, Prediction, Preprocessing


class PixelGaussianGraph(torch.nn.Module):
    """Normalised images [B,3,S,S] -> (scores [B], maps [B,S,S]); mean/var [3,S,S] as buffers."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, blur: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("var", var)
        self.blur = blur

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance = ((x - self.mean) ** 2 / self.var).sum(1, keepdim=True)  # [B,1,S,S]
        k = self.blur
        maps = F.avg_pool2d(distance, k, stride=1, padding=k // 2, count_include_pad=False)
        maps = maps[:, 0]  # [B,S,S]
        return maps.flatten(1).amax(1), maps


class PixelGaussian(ExportableMethod):
    def __init__(self, config, runtime) -> None:
        self.config, self.device = config, runtime.device
        self.geometry = Preprocessing(size=config.resolution)
        self.mean = self.var = None

    def fit(self, context: FitContext) -> None:
        total = total_sq = None
        count = 0
        for images in context.batches:  # [b,3,S,S] uint8
            x = self.geometry.normalize(images).double()
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x**2).sum(0) if total_sq is None else total_sq + (x**2).sum(0)
            count += len(x)
        if count == 0:
            raise PluginError("pixel-gaussian needs normal images to fit.", "Use --k-shot >= 1.")
        self.mean = (total / count).float()  # [3,S,S]
        self.var = (
            (total_sq / count - (total / count) ** 2).float().clamp_min(self.config.variance_floor)
        )

    def predict(self, images: torch.Tensor) -> Prediction:
        scores, maps = self._graph()(self.geometry.normalize(images))
        return Prediction(scores=scores, maps=maps)

    def export_module(self) -> torch.nn.Module:
        # the whole prediction as one module: ad export turns it into an ONNX graph
        return self._graph()

    def _graph(self) -> PixelGaussianGraph:
        if self.mean is None:
            raise PluginError("pixel-gaussian predicts before it was fitted.", "Fit it first.")
        return PixelGaussianGraph(self.mean, self.var, self.config.blur).eval()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def backbone_forward(self, images: torch.Tensor) -> torch.Tensor:
        return images  # no network: the floor is the identity

    def weights_identity(self) -> dict:
        # no weights at all: nothing random, nothing to identify
        return {
            "architecture": None,
            "source": "none",
            "pretrained": None,
            "digest": None,
            "random_backbone": False,
        }

    def memory_bank_bytes(self) -> int:
        return 0 if self.mean is None else 2 * self.mean.numel() * self.mean.element_size()

    def fitted_state(self) -> dict:
        return {"mean": self.mean, "var": self.var}

    def load_fitted_state(self, state: dict) -> None:
        self.mean = state["mean"].to(self.device)
        self.var = state["var"].to(self.device)
