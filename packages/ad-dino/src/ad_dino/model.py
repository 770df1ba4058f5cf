"""AnomalyDINO (Damm et al., WACV 2025): the algorithm, as plain functions and one module.

Sec. 3 of the paper: the patch features of k nominal references (and their rotations) form
a memory bank M; a test patch scores its distance to the nearest patch of M,
d(x, y) = 1 - <x, y> / (|x| |y|); the image score is the mean of the highest 1 % of the
patch scores (tail value at risk); masking drops background patches of the test image
before scoring. Each step restates the arithmetic of the released code
(github dammsi/AnomalyDINO @ b3435f0): what is exact, and where it was cheaper to do the
same arithmetic batched, is said at each function.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adcore.api import anomaly_map, nearest_neighbours

# The authors' rotation augmentation (src/utils.py ``augment_image``).
ROTATION_ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)
# Their centre test: flip the component's sign when at most this share of the centre is kept.
CENTRE_FRACTION = 0.35
# OpenCV's fixed-point warp (imgwarp.cpp): coordinates in 1/1024, 5-bit sub-pixel tables.
_AB_BITS, _INTER_BITS = 10, 5
_INTER_TAB = 1 << _INTER_BITS
_COEF_BITS = 15

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


def dinov2_position_embedding(
    patch_embed: torch.Tensor, grid: tuple[int, int], offset: float = 0.1
) -> torch.Tensor:
    """DINOv2's ``interpolate_pos_encoding``: bicubic, scale factor (grid + 0.1) / M.

    The released DINOv2 hub model (which the authors load) resizes its M x M table with
    scale factors, not sizes, and without antialiasing; timm's own resampling (by size, with
    antialiasing) gives other features, so the table is resized here as DINOv2 does. At
    M x M it is used as stored, as theirs.
    """
    # [1, M*M, D] -> [1, h*w, D]
    side = math.isqrt(patch_embed.shape[1])
    h, w = grid
    if (h, w) == (side, side):
        return patch_embed
    table = patch_embed.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(
        table,
        scale_factor=((h + offset) / side, (w + offset) / side),
        mode="bicubic",
        antialias=False,
    )
    return resized.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(patch_embed.dtype)


class DinoPatchFeatures(nn.Module):
    """Patch tokens of the last block after the final norm, as DINOv2's
    ``get_intermediate_layers(x)[0]`` (the authors' ``extract_features``), from a timm ViT.

    The input is cut to a multiple of the patch size from its top-left corner first, as the
    authors' ``prepare_image`` does.
    """

    def __init__(self, vit: nn.Module, backbone_autocast: Autocast = contextlib.nullcontext):
        super().__init__()
        self.vit = vit
        self.patch = int(vit.patch_embed.proj.kernel_size[0])
        self.backbone_autocast = backbone_autocast

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch, width // self.patch

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> every token after the final norm (class, registers, patches)."""
        # [B, 3, H, W] -> [B, T, D]
        vit = self.vit
        h, w = self.grid(*images.shape[-2:])
        images = images[..., : h * self.patch, : w * self.patch]
        patches = vit.patch_embed.norm(vit.patch_embed.proj(images).flatten(2).transpose(1, 2))
        table = vit.pos_embed
        cls = vit.cls_token.expand(images.shape[0], -1, -1)  # shape, not len(): export
        if vit.no_embed_class:  # timm's DINOv2-with-registers: class position folded in
            x = torch.cat([cls, patches + dinov2_position_embedding(table, (h, w))], dim=1)
        else:
            position = dinov2_position_embedding(table[:, 1:], (h, w))
            x = torch.cat([cls + table[:, :1], patches + position], dim=1)
        if vit.reg_token is not None:
            x = torch.cat([x[:, :1], vit.reg_token.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        x = vit.norm_pre(x)
        for block in vit.blocks:
            x = block(x)
        return vit.norm(x)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        # [B, 3, H, W] -> [B, h*w, D] (fp32 at least, whatever the blocks ran at), (h, w)
        with self.backbone_autocast():
            tokens = self.tokens(images)[:, self.vit.num_prefix_tokens :]
        dtype = torch.promote_types(tokens.dtype, torch.float32)
        return tokens.to(dtype), self.grid(*images.shape[-2:])


def inverse_rotations(angles: Sequence[float], height: int, width: int) -> torch.Tensor:
    """``cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)`` inverted as ``warpAffine`` does
    (``invertAffineTransform``): the map from output to source pixels, in float64."""
    # -> [A, 2, 3]
    cx, cy = width / 2.0, height / 2.0
    out = []
    for angle in angles:
        radians = angle * math.pi / 180.0
        a, b = math.cos(radians), math.sin(radians)
        m = ((a, b, (1 - a) * cx - b * cy), (-b, a, b * cx + (1 - a) * cy))
        det = m[0][0] * m[1][1] - m[0][1] * m[1][0]
        det = 1.0 / det if det != 0 else 0.0
        a11, a22 = m[1][1] * det, m[0][0] * det
        a12, a21 = -m[0][1] * det, -m[1][0] * det
        b1 = -a11 * m[0][2] - a12 * m[1][2]
        b2 = -a21 * m[0][2] - a22 * m[1][2]
        out.append(((a11, a12, b1), (a21, a22, b2)))
    return torch.tensor(out, dtype=torch.float64)


def _reflect101(index: torch.Tensor, size: int) -> torch.Tensor:
    """OpenCV's ``BORDER_REFLECT_101`` (gfedcb|abcdefgh|gfedcba) for any integer index."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    index = torch.remainder(index, period)
    return torch.where(index < size, index, period - index)


def rotate(images: torch.Tensor, angles: Sequence[float] = ROTATION_ANGLES) -> torch.Tensor:
    """The authors' ``augment_image``: each image rotated by each angle about (w/2, h/2),
    ``cv2.warpAffine`` with ``INTER_LINEAR`` and ``BORDER_REFLECT_101``, the output the
    input's size; images first, then angles.

    OpenCV 4.x computes this in fixed point: source coordinates rounded to 1/1024 and then
    to 1/32 pixel (``AB_BITS``, ``INTER_BITS``), bilinear weights in 1/32768, the sum
    rounded to uint8. The same integer arithmetic runs here on whole images, so the result
    equals OpenCV 4.10's pixel for pixel (OpenCV 5 rounds differently, by up to 1 grey
    level on 45-degree rotations).
    """
    # uint8 [B, C, H, W] -> uint8 [B*A, C, H, W]
    b, c, h, w = images.shape
    device = images.device
    matrices = inverse_rotations(angles, h, w).to(device)  # [A, 2, 3]
    xs = torch.arange(w, dtype=torch.float64, device=device)
    ys = torch.arange(h, dtype=torch.float64, device=device)
    scale, half = float(1 << _AB_BITS), 1 << (_AB_BITS - _INTER_BITS - 1)
    m = matrices[:, :, :, None]  # [A, 2, 3, 1]
    column = torch.round(m[:, :, 0] * xs * scale).long()  # [A, 2, W]: adelta, bdelta
    row = torch.round((m[:, :, 1] * ys + m[:, :, 2]) * scale).long() + half  # [A, 2, H]
    fixed = (row[:, :, :, None] + column[:, :, None, :]) >> (_AB_BITS - _INTER_BITS)
    whole, frac = fixed >> _INTER_BITS, fixed & (_INTER_TAB - 1)  # [A, 2, H, W]
    x0, y0 = _reflect101(whole[:, 0], w), _reflect101(whole[:, 1], h)
    x1, y1 = _reflect101(whole[:, 0] + 1, w), _reflect101(whole[:, 1] + 1, h)
    fx, fy = frac[:, 0], frac[:, 1]
    unit = 1 << (_COEF_BITS - 2 * _INTER_BITS)  # the tables' weights are products / 32^2
    weights = [
        (y0, x0, (_INTER_TAB - fx) * (_INTER_TAB - fy)),
        (y0, x1, fx * (_INTER_TAB - fy)),
        (y1, x0, (_INTER_TAB - fx) * fy),
        (y1, x1, fx * fy),
    ]
    flat = images.reshape(b, c, h * w).to(torch.int32)  # [B, C, H*W]
    total = torch.zeros(b, len(angles), c, h * w, dtype=torch.int32, device=device)
    for yy, xx, weight in weights:
        picked = (
            flat[:, None]
            .expand(b, len(angles), c, h * w)
            .gather(3, (yy * w + xx).reshape(1, len(angles), 1, h * w).expand(b, -1, c, -1))
        )
        total += picked * (weight * unit).reshape(1, len(angles), 1, h * w).to(torch.int32)
    rounded = (total + (1 << (_COEF_BITS - 1))) >> _COEF_BITS
    return rounded.clamp_(0, 255).to(torch.uint8).reshape(b * len(angles), c, h, w)


def top_eigenvector_by_squaring(scatter: torch.Tensor, squarings: int = 12) -> torch.Tensor:
    """The top eigenvector of symmetric positive semi-definite [B, D, D] matrices without an
    eigen-decomposition (which ONNX has no operator for): ``squarings`` repeated squarings,
    each rescaled by its largest entry, give S^(2^k) ~ lambda_1^(2^k) v v^T, whose
    largest column is then along v (unit length, sign left to the caller). Converges
    when (lambda_2 / lambda_1)^(2^k) vanishes: for k = 12, a gap above 0.5 % suffices."""
    # [B, D, D] -> [B, D]
    power = scatter / scatter.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    for _ in range(squarings):
        power = power @ power
        power = power / power.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    column = torch.linalg.vector_norm(power, dim=1).argmax(dim=1)  # [B]
    picked = power.gather(2, column[:, None, None].expand(-1, power.shape[1], 1))[..., 0]
    return F.normalize(picked, dim=1)


def first_principal_component(features: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """Each image's patch features projected on their first principal component.

    The authors fit ``sklearn.decomposition.PCA(n_components=1, svd_solver='randomized')``
    per image, whose power iterations approximate the exact component computed here: the
    top eigenvector of the centred features' D x D scatter matrix (a quarter of the time of
    an SVD of the N x D features at ViT-S/448, the same vector to float rounding). The sign
    is scikit-learn's (>= 1.5, ``svd_flip`` with ``u_based_decision=False``): the
    component's largest-magnitude entry is positive. ``exact=False`` (the exported graph)
    finds the eigenvector by :func:`top_eigenvector_by_squaring`.
    """
    # [B, N, D] -> [B, N]
    centred = features - features.mean(dim=1, keepdim=True)
    scatter = centred.transpose(1, 2) @ centred  # [B, D, D]
    if exact:
        component = torch.linalg.eigh(scatter)[1][..., -1]  # ascending eigenvalues: the top
    else:
        component = top_eigenvector_by_squaring(scatter)
    largest = component.abs().argmax(dim=1, keepdim=True)
    component = component * torch.sign(component.gather(1, largest))
    return (centred @ component[:, :, None])[..., 0]


def _sequence_dilate(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    # [B, N] bool -> [B, N] bool: max over a window along the patch sequence
    pooled = F.max_pool1d(mask[:, None].float(), kernel, stride=1, padding=kernel // 2)
    return pooled[:, 0] > 0


def _sequence_erode(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    # [B, N] bool -> [B, N] bool: min over the window, positions outside ignored
    return ~_sequence_dilate(~mask, kernel)


def background_mask(
    features: torch.Tensor,
    grid: tuple[int, int],
    threshold: float = 10.0,
    kernel: int = 3,
    border: float = 0.2,
    exact: bool = True,
) -> torch.Tensor:
    """The authors' ``compute_background_mask`` with masking on: foreground where the first
    PCA component exceeds ``threshold``; where at most 35 % of the centre (``border`` cut
    from each side) is foreground, the negated component is thresholded instead; then a
    dilation and a closing with a ``kernel``-wide window.

    The released code applies the morphology to the component's (N, 1) column, not to the
    h x w grid, so the window runs along the row-major patch sequence (a row's last patch
    neighbours the next row's first); that is reproduced.
    """
    # [B, N, D] -> [B, N] bool
    h, w = grid
    component = first_principal_component(features, exact)  # [B, N]
    mask = component > threshold
    top, bottom = int(h * border), int(h * (1 - border))
    left, right = int(w * border), int(w * (1 - border))
    centre = mask.reshape(-1, h, w)[:, top:bottom, left:right]
    kept = centre.sum(dim=(1, 2))
    flip = kept <= centre[0].numel() * CENTRE_FRACTION  # [B]
    mask = (flip[:, None] & (-component > threshold)) | (~flip[:, None] & mask)
    mask = _sequence_dilate(mask, kernel)
    return _sequence_erode(_sequence_dilate(mask, kernel), kernel)


def normalise_bank(features: torch.Tensor, distance: str) -> torch.Tensor:
    """Bank rows as the search compares them: unit length for the cosine distance (faiss's
    ``normalize_L2`` in the authors' code), unchanged for L2."""
    # [M, D] -> [M, D]
    return F.normalize(features, dim=-1) if distance == "cosine" else features


def patch_distances(
    features: torch.Tensor,
    bank: torch.Tensor,
    num_neighbors: int = 1,
    distance: str = "cosine",
    chunk: int = 4096,
    chunked: bool = True,
) -> torch.Tensor:
    """Distance of each patch to its nearest bank patches (Sec. 3.1).

    cosine: the authors' L2_normalized, faiss's squared L2 between unit vectors, mean over
    the neighbours, halved: 1 - cos. l2: the square root of the mean squared L2 distance.
    ``bank`` comes from :func:`normalise_bank`.
    """
    # [B, N, D], [M, D] -> [B, N]
    b, n, dim = features.shape
    queries = normalise_bank(features.reshape(-1, dim), distance)
    if chunked:
        squared, _ = nearest_neighbours(queries, bank, num_neighbors, "squared_l2", chunk)
    else:  # one product (the exported graph, whose batch size is free)
        products = queries @ bank.T  # [B*N, M]
        norms = (queries * queries).sum(1, keepdim=True) + (bank * bank).sum(1)
        squared = (norms - 2.0 * products).clamp_min(0.0).topk(num_neighbors, 1, largest=False)[0]
    mean = squared.mean(dim=1).reshape(b, n)
    return mean / 2 if distance == "cosine" else mean.sqrt()


def top_fraction_score(distances: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Image score: the mean of the highest ``int(N * fraction)`` patch scores, the maximum
    when that is 0 (the authors' ``mean_top1p``, over every patch, masked ones at 0)."""
    # [B, N] -> [B]
    count = int(distances.shape[1] * fraction)
    if count == 0:
        return distances.max(dim=1).values
    return distances.topk(count, dim=1).values.mean(dim=1)


def patch_map(
    distances: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], sigma: float
) -> torch.Tensor:
    """The authors' ``dists2map``: the patch grid resized bilinearly (``cv2.resize``
    ``INTER_LINEAR``, half-pixel centres as ``align_corners=False``) to the image, then
    ``scipy.ndimage.gaussian_filter`` with ``sigma``."""
    # [B, N] -> [B, H, W]
    return anomaly_map(distances.reshape(-1, *grid), size, sigma)


class AnomalyDinoGraph(nn.Module):
    """AnomalyDINO's prediction as one module: normalised images [B,3,S,S] -> (top-1 %
    scores [B], smoothed maps [B,S,S]), the bank [M, D] (from :func:`normalise_bank`) a
    constant, searched in one product; masked patches 0 where the category is masked."""

    def __init__(
        self,
        model: DinoPatchFeatures,
        bank: torch.Tensor,
        num_neighbors: int,
        distance: str,
        top_fraction: float,
        sigma: float,
        mask: dict[str, float] | None = None,
    ) -> None:
        """``mask``: :func:`background_mask`'s threshold, kernel and border when test
        patches are masked (the component found by squaring), None otherwise."""
        super().__init__()
        self.model = model
        self.register_buffer("bank", bank)
        self.num_neighbors, self.distance = num_neighbors, distance
        self.top_fraction, self.sigma, self.mask = top_fraction, sigma, mask

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, grid = self.model(images)
        distances = patch_distances(
            features, self.bank, self.num_neighbors, self.distance, chunked=False
        )
        if self.mask is not None:
            kept = background_mask(
                features, grid, self.mask["threshold"], int(self.mask["kernel"]),
                self.mask["border"], exact=False,
            )  # fmt: skip
            distances = distances * kept
        size = (images.shape[-2], images.shape[-1])
        scores = top_fraction_score(distances, self.top_fraction)
        return scores, patch_map(distances, grid, size, self.sigma)
