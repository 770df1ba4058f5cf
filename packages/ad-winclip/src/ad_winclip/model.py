"""WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023) on an open_clip ViT.

Zero-shot (Sec. 4.1-4.2): the image embedding and the embedding of every k x k window are
scored against two text prototypes (normal, anomalous) from the compositional prompt
ensemble; window scores are harmonically aggregated to patches, and the scales and the
image-level score are fused by harmonic mean. Few-shot WinCLIP+ (Sec. 4.3): patch tokens
and window embeddings of k normal images form reference banks; a query's distance to its
nearest reference gives a visual map that is averaged with the language-guided map.

A window embedding is exact: the class token plus only that window's patch tokens (after
positional embedding and ``ln_pre``, as open_clip's ``VisionTransformer.forward`` builds
them) run through the whole transformer, then ``ln_post`` and the projection. All windows
of a scale go through the transformer as one batch of short sequences. Two shortcuts do the
same arithmetic with less work: first-block queries, keys and values are per-token
functions of tokens every window shares, so they are computed once per image and gathered;
and since only the class token is read out, the last block computes keys and values for
every token but the query, attention output and MLP for the class token alone.

WinCLIP+ patch-level references are the last-layer patch tokens after ``ln_post``, as
open_clip returns them (unprojected); window references are window embeddings.

Maps are upsampled bilinearly from the patch grid and not smoothed further: every patch
score is already a harmonic mean over up to k*k overlapping windows at two scales, which is
the paper's spatial smoothing; an extra Gaussian is not part of the method.

Choices and their sources. References: the paper (Jeong et al., CVPR 2023, Sec. 4 and the
appendix's prompt lists); anomalib ``src/anomalib/models/image/winclip`` (``prompting.py``,
``torch_model.py``, ``utils.py``; read at 0a34c1dd); caoyunkang/WinClip at 0818c9d
(``WinCLIP/ad_prompts.py``, ``WinCLIP/model.py``), an unofficial reproduction (the authors
released no code).

- States (``prompts.py``): 7 normal and 4 anomalous state words, identical in the paper,
  anomalib (``NORMAL_STATES``/``ANOMALOUS_STATES``) and caoyunkang (``state_level_*``).
- Templates (``prompts.py``), 21, each ending in a full stop as in the paper and anomalib
  (caoyunkang's have none): "a cropped photo of the", "a close-up photo of a/the", "a
  bright photo of a/the", "a dark photo of the/a", "a blurry photo of the/a", "a photo of
  a/the", "a photo of a/the small", "a photo of a/the large", "a photo of the/a ... for
  visual inspection", "... for anomaly detection": all three sources. "a jpeg corrupted
  photo of a": paper and caoyunkang (anomalib lists the "the" variant twice instead).
  "a jpeg corrupted photo of the": all three. Not used: "a cropped photo of a"
  (caoyunkang only; 22 templates there).
- Prototype of a state: the mean of its prompt embeddings, normalised. ``prompt_average``
  ``normalized`` (default) normalises each embedding first, as CLIP's prompt ensembling
  (Radford et al. 2021) and caoyunkang's version V2 do, so every prompt weighs the same;
  ``raw`` averages the encoder's raw outputs, as anomalib and caoyunkang's V1 do.
- Scores: softmax over (normal, anomalous) of cos / 0.07 (anomalib's temperature;
  caoyunkang uses 100 * cos, i.e. 0.01).
- Windows: 2 x 2 and 3 x 3 patches, stride 1 (the paper's small and middle scales for
  ViT-B/16+ at 240 px; anomalib's and caoyunkang's default ``scales=(2, 3)``).
- Aggregation: a patch's score at one scale is the harmonic mean of the windows covering
  it (paper eq. 3; anomalib ``harmonic_aggregation``); scales and the image score are
  fused by harmonic mean (anomalib; caoyunkang averages scales arithmetically). WinCLIP+:
  visual maps at patch level and per scale averaged, then averaged with the zero-shot map;
  image score (zero-shot score + max of the visual map) / 2 (paper Sec. 4.3, anomalib).
- Maps: bilinear upsampling only (anomalib; caoyunkang's Gaussian is commented out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ad_winclip.prompts import prompt_ensemble
from ad_winclip.windows import (
    covering_windows,
    harmonic_aggregation,
    harmonic_mean,
    window_indices,
)
from adcore.api import PluginError, nearest_neighbours, plain_block, residual_block, upsample

Tokenizer = Callable[[list[str]], torch.Tensor]
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


def class_scores(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Anomalous probability: softmax over the two states of cos / temperature (Eq. 1).

    embeddings [..., D], text [2, D] (normal, anomalous; unit norm) -> [...].
    """
    logits = F.normalize(embeddings.float(), dim=-1) @ text.float().T / temperature
    return logits.softmax(dim=-1)[..., 1]


def visual_association(query: torch.Tensor, bank: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Distance to the nearest reference, min_r (1 - cos(f, r)) / 2 (WinCLIP+, Eq. 5).

    query [B, N, D], bank [M, D] -> [B, N]; the bank is scanned in chunks of ``chunk`` rows.
    """
    distance, _ = nearest_neighbours(query, bank, 1, "cosine", bank_chunk=chunk)
    return (distance[..., 0] / 2.0).clamp_min(0.0)


@dataclass
class WinClipOutput:
    """Scores and patch-grid maps, with the parts they are fused from (for inspection)."""

    scores: torch.Tensor  # [B]
    maps: torch.Tensor  # [B, h, w]
    zero_shot_scores: torch.Tensor  # [B] image-level anomalous probability
    zero_shot_scale_maps: torch.Tensor  # [B, S, P] one harmonic window map per scale
    zero_shot_map: torch.Tensor  # [B, P] scales and image score fused
    visual_maps: torch.Tensor | None  # [B, 1+S, P] patch level, then each scale (WinCLIP+)


class WinClip(nn.Module):
    """The algorithm on an open_clip ``CLIP`` whose visual tower is a ``VisionTransformer``."""

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Tokenizer,
        scales: Sequence[int] = (2, 3),
        temperature: float = 0.07,
        prompt_average: str = "normalized",
        text_batch_size: int = 64,
        window_batch_size: int = 2048,
        backbone_autocast: Autocast = contextlib.nullcontext,
    ) -> None:
        super().__init__()
        visual = clip.visual
        needed = ("conv1", "class_embedding", "positional_embedding", "transformer", "ln_post")
        if not all(hasattr(visual, name) for name in needed) or (
            getattr(visual, "attn_pool", None) is not None
            or getattr(visual, "pool_type", "tok") != "tok"
        ):
            raise PluginError(
                f"WinCLIP needs an open_clip ViT with a class token; got {type(visual).__name__}.",
                "Choose an open_clip ViT backbone (e.g. ViT-B-16-plus-240, ViT-B-16, ViT-L-14).",
            )
        self.clip = clip
        self.tokenizer = tokenizer
        self.scales = tuple(scales)
        self.temperature = temperature
        if prompt_average not in ("normalized", "raw"):
            raise ValueError(
                f"prompt_average must be 'normalized' or 'raw', not {prompt_average!r}"
            )
        self.prompt_average = prompt_average
        self.text_batch_size = text_batch_size
        self.window_batch_size = window_batch_size
        # reduced precision for the tower passes only (``Runtime.backbone_autocast``)
        self.backbone_autocast = backbone_autocast
        self.grid: tuple[int, int] = tuple(visual.grid_size)
        for k in self.scales:
            index = window_indices(self.grid, k)
            # token positions of [class, window patches]: patches sit after the class token
            tokens = torch.cat([torch.zeros(len(index), 1, dtype=torch.long), index + 1], dim=1)
            self.register_buffer(f"window_tokens_{k}", tokens, persistent=False)
            self.register_buffer(f"covering_{k}", covering_windows(self.grid, k), persistent=False)
        self.text_cache: dict[str, torch.Tensor] = {}
        self.text_embeddings: torch.Tensor | None = None  # [2, D]
        self.patch_bank: torch.Tensor | None = None  # [M, C]
        self.window_banks: dict[int, torch.Tensor] = {}  # k -> [M_k, D]

    @property
    def device(self) -> torch.device:
        return self.clip.visual.conv1.weight.device

    # --- text ---------------------------------------------------------------------------

    def encode_text(self, class_name: str) -> torch.Tensor:
        """Normal and anomalous prototypes for a class name, cached -> [2, D] (Sec. 4.1).

        Each state's prompt embeddings are averaged (after normalising each one, or raw:
        ``prompt_average``), and the two means normalised.
        """
        if class_name not in self.text_cache:
            normal, anomalous = prompt_ensemble(class_name)
            tokens = self.tokenizer(normal + anomalous).to(self.device)
            with self.backbone_autocast():
                parts = [self.clip.encode_text(part) for part in tokens.split(self.text_batch_size)]
            embeddings = torch.cat(parts).float()  # [P, D]
            if self.prompt_average == "normalized":
                embeddings = F.normalize(embeddings, dim=-1)
            prototypes = torch.stack(
                [embeddings[: len(normal)].mean(0), embeddings[len(normal) :].mean(0)]
            )
            self.text_cache[class_name] = F.normalize(prototypes, dim=-1)
        return self.text_cache[class_name]

    def set_class(self, class_name: str) -> None:
        """Score against this class's prototypes from now on."""
        self.text_embeddings = self.encode_text(class_name)

    # --- image --------------------------------------------------------------------------

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B,3,H,W] -> transformer input tokens [B, 1+P, C].

        The same steps and order as open_clip's ``VisionTransformer._embeds``: patchify,
        prepend the class token, add positional embeddings, patch dropout (identity in
        eval), ``ln_pre``.
        """
        visual = self.clip.visual
        x = visual.conv1(images)  # [B, C, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, P, C]
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))

    def first_block_qkv(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Queries, keys and values of the first block for every token [B, 1+P, 3C].

        First-block inputs are the same tokens in every window, so their projections are
        computed once per image and gathered; None when the block is not a plain
        ``nn.MultiheadAttention`` block (the windows then run the block as it is).
        """
        block = self.clip.visual.transformer.resblocks[0]
        if not plain_block(block):
            return None
        return F.linear(block.ln_1(tokens), block.attn.in_proj_weight, block.attn.in_proj_bias)

    @staticmethod
    def _class_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A last plain block that outputs the class token only: [N, L, C] -> [N, C].

        Keys and values come from every token; query, attention output and MLP only from
        the class token, which is all that is read out.
        """
        attn = block.attn
        n, length, width = x.shape
        normed = block.ln_1(x)
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        q = F.linear(normed[:, 0], weight[:width], None if bias is None else bias[:width])
        kv = F.linear(normed, weight[width:], None if bias is None else bias[width:])
        k, v = kv.view(n, length, 2, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q.view(n, attn.num_heads, 1, -1), k, v)
        cls = x[:, 0] + block.ls_1(attn.out_proj(out.reshape(n, width)))
        return cls + block.ls_2(block.mlp(block.ln_2(cls)))

    def run_blocks(
        self, x: torch.Tensor, qkv: torch.Tensor | None = None, class_only: bool = False
    ) -> torch.Tensor:
        """Batch-first tokens [N, L, C] through the transformer -> [N, L, C] or class [N, C].

        Plain blocks run through ``residual_block`` (``_class_block`` for the last one when only the
        class token is read); any other block runs as it is, in the layout open_clip gives
        it (``transformer.batch_first``): feeding [N, L, C] to sequence-first blocks, or the
        reverse, mixes tokens of different sequences. ``qkv`` is the first block's
        projections (``first_block_qkv``).
        """
        transformer = self.clip.visual.transformer
        seq_first = not getattr(transformer, "batch_first", True)
        blocks = list(transformer.resblocks)
        for index, block in enumerate(blocks):
            if not plain_block(block):
                x = block(x.transpose(0, 1)).transpose(0, 1) if seq_first else block(x)
            elif class_only and index == len(blocks) - 1:
                return self._class_block(block, x)
            else:
                x = residual_block(block, x, qkv if index == 0 else None)
        return x[:, 0] if class_only else x

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.clip.visual.proj
        return pooled @ proj if proj is not None else pooled

    def encode_full(
        self, tokens: torch.Tensor, qkv: torch.Tensor | None = None, patches: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens [B, 1+P, C] -> image embedding [B, D], patch tokens after ln_post [B, P, C].

        Without ``patches`` (zero-shot) only the class token leaves the last block.
        """
        visual = self.clip.visual
        if not patches:
            pooled = visual.ln_post(self.run_blocks(tokens, qkv, class_only=True))
            return self._project(pooled), None
        x = self.run_blocks(tokens, qkv)
        if getattr(visual, "final_ln_after_pool", False):
            pooled, rest = visual.ln_post(x[:, 0]), x[:, 1:]
        else:
            x = visual.ln_post(x)
            pooled, rest = x[:, 0], x[:, 1:]
        return self._project(pooled), rest

    def window_embeddings(
        self, tokens: torch.Tensor, k: int, qkv: torch.Tensor | None = None, chunked: bool = True
    ) -> torch.Tensor:
        """Tokens [B, 1+P, C] (and first-block qkv [B, 1+P, 3C]) -> windows [B, W, D].

        Sequences (class token + one window's patches) are gathered with an index tensor
        and run in chunks of ``window_batch_size`` sequences to bound memory; without
        ``chunked`` (the exported graph, whose batch size is free) all at once.
        """
        positions = getattr(self, f"window_tokens_{k}")  # [W, 1+k*k]
        batch, windows = tokens.shape[0], positions.shape[0]
        if not chunked:
            index = (torch.arange(batch, device=tokens.device)[:, None, None], positions[None])
            part_qkv = None if qkv is None else qkv[index].flatten(0, 1)  # [B*W, 1+k*k, 3C]
            pooled = self.run_blocks(tokens[index].flatten(0, 1), part_qkv, class_only=True)
            return self._project(self.clip.visual.ln_post(pooled)).view(batch, windows, -1)
        sequence = torch.arange(batch * windows, device=tokens.device)
        outputs = []
        for part in sequence.split(self.window_batch_size):
            index = ((part // windows)[:, None], positions[part % windows])
            part_qkv = None if qkv is None else qkv[index]  # [n, 1+k*k, 3C]
            outputs.append(self.run_blocks(tokens[index], part_qkv, class_only=True))
        pooled = self.clip.visual.ln_post(torch.cat(outputs))  # [B*W, C]
        return self._project(pooled).view(batch, windows, -1)

    # --- few-shot references ------------------------------------------------------------

    def reset_references(self) -> None:
        self.patch_bank, self.window_banks = None, {}

    def encode(
        self, images: torch.Tensor, patches: bool = True, chunked: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[int, torch.Tensor]]:
        """The tower passes, in fp32 whatever precision they ran at.

        Normalised images [B,3,H,W] -> image embeddings [B, D], patch tokens [B, P, C]
        (None without ``patches``), window embeddings {k: [B, W_k, D]}.
        """
        with self.backbone_autocast():
            tokens = self.embed_tokens(images)
            qkv = self.first_block_qkv(tokens)
            image, patch = self.encode_full(tokens, qkv, patches=patches)
            windows = {k: self.window_embeddings(tokens, k, qkv, chunked) for k in self.scales}
        patch = None if patch is None else patch.float()
        return image.float(), patch, {k: value.float() for k, value in windows.items()}

    @torch.no_grad()
    def add_references(self, images: torch.Tensor) -> None:
        """Append normal images [b,3,H,W] (normalised) to the reference banks (Sec. 4.3)."""
        _, patches, windows = self.encode(images)
        new = {k: value.flatten(0, 1) for k, value in windows.items()}
        patches = patches.flatten(0, 1)
        self.patch_bank = (
            patches if self.patch_bank is None else torch.cat([self.patch_bank, patches])
        )
        for k, value in new.items():
            old = self.window_banks.get(k)
            self.window_banks[k] = value if old is None else torch.cat([old, value])

    # --- scoring ------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, chunked: bool = True) -> WinClipOutput:
        """Normalised images [B,3,H,W] -> ``WinClipOutput`` with maps on the patch grid;
        ``chunked``: windows in chunks of ``window_batch_size`` sequences (False: at once)."""
        if self.text_embeddings is None:
            raise PluginError("WinCLIP was asked to predict before fit.", "Call fit first.")
        text = self.text_embeddings
        few_shot = self.patch_bank is not None
        image_embedding, patches, windows = self.encode(images, few_shot, chunked)
        image_score = class_scores(image_embedding, text, self.temperature)  # [B]
        scale_maps = torch.stack(
            [
                harmonic_aggregation(
                    class_scores(windows[k], text, self.temperature),
                    getattr(self, f"covering_{k}"),
                )
                for k in self.scales
            ],
            dim=1,
        )  # [B, S, P]
        image_level = image_score[:, None, None].expand(-1, 1, scale_maps.shape[-1])
        zero_shot_map = harmonic_mean(torch.cat([scale_maps, image_level], dim=1), dim=1)
        scores, fused, visual = image_score, zero_shot_map, None
        if few_shot:
            levels = [visual_association(patches, self.patch_bank)]
            for k in self.scales:
                distance = visual_association(windows[k], self.window_banks[k])
                levels.append(harmonic_aggregation(distance, getattr(self, f"covering_{k}")))
            visual = torch.stack(levels, dim=1)  # [B, 1+S, P]
            visual_map = visual.mean(dim=1)
            fused = (zero_shot_map + visual_map) / 2.0
            scores = (image_score + visual_map.amax(dim=-1)) / 2.0
        return WinClipOutput(
            scores=scores,
            maps=fused.view(-1, *self.grid),
            zero_shot_scores=image_score,
            zero_shot_scale_maps=scale_maps,
            zero_shot_map=zero_shot_map,
            visual_maps=visual,
        )


class WinClipGraph(nn.Module):
    """The fitted WinCLIP(+) as one module for export: normalised images [B,3,H,W] ->
    (scores [B], maps [B,H,W] upsampled bilinearly to the input size), the text
    embeddings and reference banks as constants. Windows run all at once (memory grows
    with the batch: B x windows sequences per scale)."""

    def __init__(self, model: WinClip, size: int) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(images, chunked=False)
        return output.scores.float(), upsample(output.maps.float(), self.size)
