"""The frozen open_clip ViT as MuSc reads it: patch tokens after chosen blocks, and the
projected, unit-length class token that RsCIN compares images by."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adcore.api import ConfigError


def resize_positions(position: torch.Tensor, grid: int) -> torch.Tensor:
    """[1+g*g, C] -> [1+grid*grid, C]: the patch part bicubic (``align_corners=False``, no
    antialias), as the authors' ``open_clip/model.py`` ``resize_pos_embed`` when they build
    the model at their image size; unchanged when g == grid."""
    old = round((position.shape[0] - 1) ** 0.5)
    if old == grid:
        return position
    wide = torch.promote_types(position.dtype, torch.float32)  # fp16 tables resize in fp32
    patches = position[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).to(wide)
    resized = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(position.dtype)
    return torch.cat([position[:1], resized], dim=0)


class ClipPatchTokens(nn.Module):
    """An open_clip ViT at ``resolution`` -> tokens after ``layers`` and the class embedding.

    As the authors' ``encode_image(image, out_layers)``: the residual stream after each chosen
    block (before ``ln_post``), and ``ln_post`` of the last block's class token times ``proj``.
    The grid is ``resolution // patch``; a remainder is the border the strided patch
    convolution never covers.
    """

    def __init__(self, visual: nn.Module, resolution: int, layers: list[int]) -> None:
        super().__init__()
        required = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post")
        if not all(hasattr(visual, name) for name in required) or visual.proj is None:
            raise ConfigError(
                f"The backbone's image tower ({type(visual).__name__}) is not an open_clip "
                "VisionTransformer with a class token and a projection.",
                "MuSc needs a CLIP ViT such as ViT-L-14-336 or ViT-B-16.",
            )
        if getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
            raise ConfigError(
                f"The backbone's image tower pools with {visual.pool_type!r} (or an attention "
                "pooler), not its class token, which RsCIN compares images by.",
                "Use a CLIP ViT that pools its class token, such as ViT-L-14-336 or ViT-B-16.",
            )
        patch = visual.conv1.kernel_size[0]
        if resolution < patch:
            raise ConfigError(
                f"model.resolution {resolution} is below the backbone's patch size {patch}.",
                f"Set model.resolution to at least {patch} (the authors use 518).",
            )
        depth = len(visual.transformer.resblocks)
        if max(layers) > depth:
            raise ConfigError(
                f"model.layers {layers} go beyond the backbone's {depth} blocks.",
                f"Choose model.layers between 1 and {depth} (ViT-L: 6, 12, 18, 24).",
            )
        self.visual = visual
        self.layers = sorted(layers)
        self.grid = resolution // patch
        self.register_buffer(
            "position",
            resize_positions(visual.positional_embedding.detach(), self.grid),
            persistent=False,
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] normalised -> patch tokens [K, B, h*w, C] of the K chosen blocks,
        class embeddings [B, D] of unit length."""
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # [B, C, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + self.position.to(x.dtype))
        taken = []
        for index, block in enumerate(visual.transformer.resblocks, start=1):
            x = block(x)
            if index in self.layers:
                taken.append(x[:, 1:])
        embedding = visual.ln_post(x[:, 0]) @ visual.proj  # [B, D]
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        return torch.stack(taken), embedding
