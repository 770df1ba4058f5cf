"""A compact, independent transcription of the AnomalyDINO authors' pipeline, in float64.

Written from reading github dammsi/AnomalyDINO @ b3435f0 (``src/backbones.py``
``DINOv2Wrapper``, ``src/detection.py`` ``run_anomaly_detection``, ``src/utils.py``
``augment_image``/``rotate_image``/``dists2map``, ``src/post_eval.py`` ``mean_top1p``) and
the DINOv2 hub model they load (github facebookresearch/dinov2 @ e1277af, the code
torch.hub served from February to October 2024: ``dinov2/models/vision_transformer.py``,
``dinov2/layers/{attention,block,mlp,layer_scale,patch_embed}.py``). Plain functions on a
state dict in DINOv2's own key names, in the authors' order of operations; library calls
the authors make are made here too (torchvision's ``Resize``/``ToTensor``/``Normalize``,
``scipy.ndimage.gaussian_filter``). Three of their library calls are restated instead:

- ``cv2.warpAffine`` (the rotations): OpenCV 4.x's fixed-point arithmetic, because
  OpenCV 5 (installed here) rounds 45-degree rotations differently;
- ``PCA(n_components=1, svd_solver='randomized')``: the exact component (numpy SVD), with
  scikit-learn >= 1.5's sign rule; the randomized solver, unseeded in their code,
  approximates it;
- ``cv2.dilate``/``cv2.morphologyEx(MORPH_CLOSE)`` on the (N, 1) mask column and
  ``cv2.resize(INTER_LINEAR)`` of the patch map, in numpy.

Validation, once, by a script outside the repository, against the authors' own modules
imported from b3435f0 (OpenCV 4.10.0.84, scikit-learn 1.5.2, faiss-cpu 1.15.1, torch.hub's
``load`` pointed at the DINOv2 ``DinoVisionTransformer`` of e1277af built from
:func:`dinov2_state` with ``img_size=238, patch_size=14, embed_dim=32, depth=2,
num_heads=2, init_values=1.0, block_chunks=0, interpolate_offset=0.1``): see
``tests/test_anomalydino_parity.py``'s docstring for what agreed and how closely.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from torchvision import transforms

Tensors = dict[str, torch.Tensor]

# the tiny DINOv2-shaped model of the parity tests: a 17 x 17 position table (238 px), as
# ViT-S/14's 37 x 37 (518 px) is read at 32 x 32 (448 px), patch 14, two blocks, width 32
TINY = {"img_size": 238, "patch": 14, "dim": 32, "depth": 2, "heads": 2}
ANGLES = [0, 45, 90, 135, 180, 225, 270, 315]


def dinov2_state(seed: int = 0, scale: float = 6.0, registers: int = 0, **shape) -> Tensors:
    """Seeded random weights in DINOv2's own key names (``dinov2_vits14_pretrain.pth``'s).

    LayerScale gammas near 1 (DINOv2's trained ones are far from timm's 1e-5 init) so every
    block counts; the final norm's weight scaled by ``scale`` so the first PCA component of
    the tiny model's features spans the authors' threshold of 10 as ViT-S/14's does;
    ``registers``: DINOv2-with-registers tokens (``dinov2_vits14_reg4_pretrain.pth``).
    """
    cfg = {**TINY, **shape}
    dim, side, patch = cfg["dim"], cfg["img_size"] // cfg["patch"], cfg["patch"]
    gen = torch.Generator().manual_seed(seed)

    def normal(*size, std=0.02, mean=0.0):
        return (torch.randn(*size, generator=gen) * std + mean).float()

    state = {
        "cls_token": normal(1, 1, dim, std=0.5),
        "pos_embed": normal(1, 1 + side * side, dim, std=0.5),
        "mask_token": normal(1, dim),
        "patch_embed.proj.weight": normal(dim, 3, patch, patch, std=0.05),
        "patch_embed.proj.bias": normal(dim, std=0.1),
        "norm.weight": normal(dim, std=0.1, mean=1.0) * scale,
        "norm.bias": normal(dim, std=0.5),
    }
    if registers:
        state["register_tokens"] = normal(1, registers, dim, std=0.5)
    for i in range(cfg["depth"]):
        p = f"blocks.{i}."
        state.update({
            p + "norm1.weight": normal(dim, std=0.1, mean=1.0),
            p + "norm1.bias": normal(dim, std=0.1),
            p + "attn.qkv.weight": normal(3 * dim, dim, std=0.2),
            p + "attn.qkv.bias": normal(3 * dim, std=0.1),
            p + "attn.proj.weight": normal(dim, dim, std=0.2),
            p + "attn.proj.bias": normal(dim, std=0.1),
            p + "ls1.gamma": normal(dim, std=0.2, mean=1.0),
            p + "norm2.weight": normal(dim, std=0.1, mean=1.0),
            p + "norm2.bias": normal(dim, std=0.1),
            p + "mlp.fc1.weight": normal(4 * dim, dim, std=0.2),
            p + "mlp.fc1.bias": normal(4 * dim, std=0.1),
            p + "mlp.fc2.weight": normal(dim, 4 * dim, std=0.1),
            p + "mlp.fc2.bias": normal(dim, std=0.1),
            p + "ls2.gamma": normal(dim, std=0.2, mean=1.0),
        })  # fmt: skip
    return state


def object_image(size: int, seed: int, defect: bool = False, height: int | None = None):
    """A textured bright part on a darker background (an MVTec-like object), uint8 [H, W, 3];
    ``defect`` adds a dark scratch across the part."""
    height = height or size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:size].astype(np.float64)
    cy, cx = height / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
    radius = 0.3 * min(size, height)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    stripes = 40 * np.sin((xx + yy) / 5.0)
    base = np.where(inside, 170 + stripes, 40 + 0.1 * yy)
    pixels = np.stack([base, base * 0.9 + 10, base * 0.7 + 30], axis=-1)
    if defect:
        scratch = np.abs((yy - cy) - 0.4 * (xx - cx)) < 3
        pixels[scratch & inside] = 20
    pixels += rng.normal(0, 6, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


# -- preprocessing: DINOv2Wrapper.prepare_image ------------------------------------------


def resized_image(rgb: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H', W']: Resize(shorter side, BICUBIC, antialias),
    ToTensor, ImageNet Normalize (the wrapper's ``transform``)."""
    transform = transforms.Compose([
        transforms.Resize(size=resolution, interpolation=transforms.InterpolationMode.BICUBIC,
                          antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])  # fmt: skip
    return transform(Image.fromarray(rgb))


def prepare_image(rgb: np.ndarray, resolution: int, patch: int) -> tuple[torch.Tensor, tuple]:
    """``resized_image`` cut at the bottom/right to whole patches -> [3, h*p, w*p], (h, w)."""
    tensor = resized_image(rgb, resolution)
    height, width = tensor.shape[1:]
    tensor = tensor[:, : height - height % patch, : width - width % patch]
    return tensor, (tensor.shape[1] // patch, tensor.shape[2] // patch)


# -- features: DINOv2's get_intermediate_layers(x)[0], its 2024 code --------------------


def _layer_norm(x, w, name):
    return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], eps=1e-6)


def _linear(x, w, name):
    return x @ w[name + ".weight"].T + w[name + ".bias"]


def dinov2_features(state: Tensors, images: torch.Tensor, heads: int) -> torch.Tensor:
    """Patch tokens of the last block after the final norm, [B, h*w, D], in float64."""
    w = {k: v.double() for k, v in state.items()}
    x = images.double()
    b, _, height, width = x.shape
    patch = w["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(b, -1, -1), x], dim=1)
    # interpolate_pos_encoding(x, w=height, h=width): bicubic by scale factor (n + 0.1) / M
    table = w["pos_embed"]
    n, big = x.shape[1] - 1, table.shape[1] - 1
    if n == big and height == width:
        pos = table
    else:
        m = int(math.sqrt(big))
        h0, w0 = height // patch, width // patch
        grid = table[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=(float(h0 + 0.1) / m, float(w0 + 0.1) / m), mode="bicubic",
            antialias=False,
        )  # fmt: skip
        assert grid.shape[-2:] == (h0, w0)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])
        pos = torch.cat([table[:, :1].float(), grid], dim=1).double()
    x = x + pos
    registers = w.get("register_tokens")
    if registers is not None:  # after the position table, right behind the class token
        x = torch.cat([x[:, :1], registers.expand(b, -1, -1), x[:, 1:]], dim=1)
    depth = len({k.split(".")[1] for k in w if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        y = _layer_norm(x, w, p + "norm1")
        qkv = _linear(y, w, p + "attn.qkv").reshape(b, -1, 3, heads, x.shape[-1] // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
        y = (attention.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, -1, x.shape[-1])
        x = x + w[p + "ls1.gamma"] * _linear(y, w, p + "attn.proj")
        y = F.gelu(_linear(_layer_norm(x, w, p + "norm2"), w, p + "mlp.fc1"))
        x = x + w[p + "ls2.gamma"] * _linear(y, w, p + "mlp.fc2")
    skip = 1 + (0 if registers is None else registers.shape[1])
    return _layer_norm(x, w, "norm")[:, skip:]


# -- rotation: augment_image / rotate_image (cv2.warpAffine, OpenCV 4.x arithmetic) -------


def rotate_image(image: np.ndarray, angle: float) -> np.ndarray:
    """``warpAffine(image, getRotationMatrix2D((w/2, h/2), angle, 1), (w, h), INTER_LINEAR,
    BORDER_REFLECT_101)`` as OpenCV 4.x's integer code computes it."""
    height, width = image.shape[:2]
    cx, cy = width / 2, height / 2
    alpha = math.cos(angle * math.pi / 180)
    beta = math.sin(angle * math.pi / 180)
    fwd = np.array([[alpha, beta, (1 - alpha) * cx - beta * cy],
                    [-beta, alpha, beta * cx + (1 - alpha) * cy]])  # fmt: skip
    det = fwd[0, 0] * fwd[1, 1] - fwd[0, 1] * fwd[1, 0]
    det = 1 / det if det != 0 else 0
    inv = np.empty((2, 3))
    inv[0, 0], inv[1, 1] = fwd[1, 1] * det, fwd[0, 0] * det
    inv[0, 1], inv[1, 0] = -fwd[0, 1] * det, -fwd[1, 0] * det
    inv[0, 2] = -inv[0, 0] * fwd[0, 2] - inv[0, 1] * fwd[1, 2]
    inv[1, 2] = -inv[1, 0] * fwd[0, 2] - inv[1, 1] * fwd[1, 2]
    x = np.arange(width)
    y = np.arange(height)
    # WarpAffineInvoker: 10-bit coordinates, half a 1/32 step added, then 1/32 pixels
    adelta = np.rint(inv[0, 0] * x * 1024).astype(np.int64)
    bdelta = np.rint(inv[1, 0] * x * 1024).astype(np.int64)
    x0 = np.rint((inv[0, 1] * y + inv[0, 2]) * 1024).astype(np.int64) + 16
    y0 = np.rint((inv[1, 1] * y + inv[1, 2]) * 1024).astype(np.int64) + 16
    sx = (x0[:, None] + adelta[None, :]) >> 5
    sy = (y0[:, None] + bdelta[None, :]) >> 5
    ax, ay = sx & 31, sy & 31
    sx, sy = sx >> 5, sy >> 5

    def border(p, n):  # borderInterpolate, BORDER_REFLECT_101
        p = p.copy()
        while True:
            low, high = p < 0, p >= n
            if not (low.any() or high.any()):
                return p
            p[low] = -p[low]
            p[high] = 2 * (n - 1) - p[high]

    out = np.zeros(image.shape, dtype=np.int64)
    for dy, wy in ((0, 32 - ay), (1, ay)):
        for dx, wx in ((0, 32 - ax), (1, ax)):
            rows, cols = border(sy + dy, height), border(sx + dx, width)
            weight = (wy * wx * 32)[..., None]  # remap's 15-bit table, 32 * 32 * 32 = 2^15
            out += weight * image[rows, cols].astype(np.int64)
    return np.clip((out + (1 << 14)) >> 15, 0, 255).astype(np.uint8)


# -- masking: DINOv2Wrapper.compute_background_mask(masking_type=True) --------------------


def first_pc(features: np.ndarray) -> np.ndarray:
    """PCA(n_components=1).fit_transform, exactly, with scikit-learn >= 1.5's sign -> [N]."""
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])
    return centred @ v


def _column_filter(column: np.ndarray, kernel: int, op) -> np.ndarray:
    """cv2.dilate / cv2.erode of an (N, 1) image with a k x k kernel and default borders:
    along the column only, positions outside ignored."""
    r = kernel // 2
    n = len(column)
    return np.array([op(column[max(0, i - r) : min(n, i + r + 1)]) for i in range(n)])


def background_mask(
    features: np.ndarray, grid, threshold=10.0, kernel_size=3, border=0.2
) -> np.ndarray:
    """[N, D] -> bool [N]."""
    pc = first_pc(features)
    mask = pc > threshold
    g0, g1 = grid
    m = mask.reshape(grid)[int(g0 * border) : int(g0 * (1 - border)),
                           int(g1 * border) : int(g1 * (1 - border))]  # fmt: skip
    if m.sum() <= m.size * 0.35:
        mask = -pc > threshold
    mask = _column_filter(mask, kernel_size, np.max)  # cv2.dilate
    mask = _column_filter(_column_filter(mask, kernel_size, np.max), kernel_size, np.min)
    return mask.astype(bool)


# -- scores and maps: run_anomaly_detection, mean_top1p, dists2map ------------------------


def reference_bank(state, references, resolution, heads, rotation=True, masking=False, **mask):
    """Features of every reference (rotated first, then prepared) -> the unit rows [M, D]."""
    rows = []
    for image in references:
        for view in [rotate_image(image, a) for a in ANGLES] if rotation else [image]:
            tensor, grid = prepare_image(view, resolution, TINY["patch"])
            features = dinov2_features(state, tensor[None], heads)[0].numpy()
            keep = background_mask(features, grid, **mask) if masking else slice(None)
            rows.append(features[keep])
    bank = np.concatenate(rows)
    return bank / np.linalg.norm(bank, axis=1, keepdims=True)


def patch_scores(state, bank, image, resolution, heads, masking=False, k=1, **mask):
    """The L2_normalized search: (squared L2 between unit vectors, mean of the k nearest) / 2
    for the kept patches, 0 elsewhere -> the patch grid [h, w]."""
    tensor, grid = prepare_image(image, resolution, TINY["patch"])
    features = dinov2_features(state, tensor[None], heads)[0].numpy()
    keep = background_mask(features, grid, **mask) if masking else np.ones(len(features), bool)
    query = features[keep] / np.linalg.norm(features[keep], axis=1, keepdims=True)
    squared = ((query[:, None, :] - bank[None, :, :]) ** 2).sum(-1)
    nearest = np.sort(squared, axis=1)[:, :k].mean(axis=1) / 2
    out = np.zeros(len(features))
    out[keep] = nearest
    return out.reshape(grid)


def mean_top1p(distances: np.ndarray) -> float:
    values = distances.flatten()
    count = int(len(values) * 0.01)
    return float(values.max() if count == 0 else np.mean(sorted(values, reverse=True)[:count]))


def dists2map(grid: np.ndarray, shape) -> np.ndarray:
    """cv2.resize(INTER_LINEAR) to ``shape`` (half-pixel centres, edges clamped), then
    gaussian_filter(sigma=4)."""

    def taps(out_size, in_size):
        src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        low = np.floor(src).astype(int)
        frac = src - low
        frac[low < 0], low[low < 0] = 0.0, 0
        top = low >= in_size - 1
        frac[top], low[top] = 0.0, in_size - 1
        return low, np.minimum(low + 1, in_size - 1), frac

    r0, r1, fr = taps(shape[0], grid.shape[0])
    c0, c1, fc = taps(shape[1], grid.shape[1])
    rows = grid[r0] * (1 - fr)[:, None] + grid[r1] * fr[:, None]
    resized = rows[:, c0] * (1 - fc) + rows[:, c1] * fc
    return gaussian_filter(resized, sigma=4)
