"""Compact, independent transcriptions of the authors' AF-CLIP and miniCLIP arithmetic.

Written from reading github Faustinaqq/AF-CLIP (commit bb7edec, ``clip/model.py``,
``clip/adaptor.py``, ``main.py``) and github suniverse77/miniCLIP (commit e8ffb70,
``af_tiny/model/{clip,transformer,adapter,tokenizer}.py``, ``af_tiny/utils/loss_fn.py``,
``af_tiny/utils/evaluation.py``; for the inputs AF-CLIP's ``main.py``, ``clip/clip.py``
``_transform`` and ``dataset/mvtec.py``, af_tiny's ``utils/util.py`` ``load_model`` and
``dataset/mvtec.py``): plain functions on a state dict, in the authors' order of
operations (sequence-first layout, unfold-based aggregation for AF-CLIP, per-window convs
for miniCLIP, losses on probabilities), including one side effect: both alignment losses
rewrite the 0/1 patch targets to -1/1 in place through ``copy.copy`` (which shares
storage), after the map focal loss saved them for its backward pass, so the released
training computes the map focal gradient with target -1 on normal patches (values are
unaffected).

Validated once against the authors' own modules, imported from those commits in a scratch
folder (einops installed there), on random weights of the shapes the tests use (TinyCLIP-8M
at 90 px for miniCLIP, a 4-block width-64 ViT at 48 px for AF-CLIP): scores, maps, features,
text features, few-shot scores and maps and every loss term were bitwise equal; gradients
of every trained tensor agreed to 2e-6 relative (fp32, CPU). ``dataset_item`` was checked
once against both repositories' own ``dataset/mvtec.py`` ``MVTecDataset`` with the transforms
built as AF-CLIP's ``main.py`` and af_tiny's ``load_model`` build them (61 x 45, 40 x 61,
50 x 37 and 37 x 66 px files at 48 and 90 px): images and soft masks bitwise equal. On the
parity tests' non-square files and weight files (einops in a scratch folder, a
``pkg_resources`` shim, ``torch.load(weights_only=False)`` for the pickled adaptor), the
authors' modules (AF-CLIP's ``CLIP.detect_forward``/``store_memory`` and ``main.py``'s
losses; af_tiny's ``CLIP.forward`` and ``utils/loss_fn.py``) and this transcription gave
bitwise equal scores, maps (zero- and few-shot) and loss terms; gradients agreed to 1.2e-7
(AF-CLIP) and 3.2e-6 (miniCLIP) of each tensor's largest entry. That run used an earlier
defect in the 45 x 61 px file (rows 10:28, columns 20:50), whose patch targets do not depend
on the mask filter; the parity tests now use defects whose soft masks give other targets
than nearest-neighbour masks (rows 8:30, columns 15:45 at 48 px; rows 0:26, columns 6:35 at
90 px). On those files (and a 61 x 40 px one) both repositories' ``MVTecDataset`` with
their transforms, ``dataset_item`` and the host loader with ``mask_filter="bicubic"`` gave
bitwise equal images and soft masks, and the host's ground truth equalled their ``gt > 0.5``.

Weights: ``clip`` is an open_clip CLIP state dict (the authors' key names are the same);
trained parts use the authors' names (``attn_adapter.attention.attn.to_q.weight``, ...).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from torchvision import transforms

Tensors = dict[str, torch.Tensor]


# -- inputs: what both repositories' data sets hand the model ---------------------------


def dataset_item(image_path, mask_path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MVTecDataset.__getitem__ with both repositories' transforms: (img [3, S, S], gt [1, S, S]).

    The image: ``clip._transform(n_px)`` with its Resize and CenterCrop replaced by
    ``Resize((S, S), BICUBIC)`` and ``CenterCrop((S, S))``, then RGB, ToTensor and OpenAI
    CLIP's Normalize. The mask: the file's values (0/255), or zeros for a normal image,
    through ``target_transform``: ``Resize((S, S), BICUBIC)`` and ToTensor (soft edges).
    """
    bicubic = transforms.InterpolationMode.BICUBIC
    transform = transforms.Compose([
        transforms.Resize(size=(size, size), interpolation=bicubic),
        transforms.CenterCrop(size=(size, size)),
        lambda image: image.convert("RGB"),
        transforms.ToTensor(),
        transforms.Normalize((0.48145466, 0.4578275, 0.40821073),
                             (0.26862954, 0.26130258, 0.27577711)),
    ])  # fmt: skip
    target_transform = transforms.Compose([
        transforms.Resize(size=(size, size), interpolation=bicubic), transforms.ToTensor()
    ])  # fmt: skip
    img = Image.open(image_path).convert("RGB")
    if mask_path is not None:
        gt = np.array(Image.open(mask_path))
    else:
        gt = np.zeros((img.size[1], img.size[0]), dtype=np.uint8)
    return transform(img), target_transform(Image.fromarray(gt))


def layer_norm(x: torch.Tensor, w: Tensors, name: str) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], 1e-5)


def linear(x: torch.Tensor, w: Tensors, name: str) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def block(x: torch.Tensor, w: Tensors, name: str, heads: int, mask=None) -> torch.Tensor:
    """ResidualAttentionBlock on [L, N, D]: nn.MultiheadAttention, then a QuickGELU MLP."""
    h = layer_norm(x, w, f"{name}.ln_1")
    width = x.shape[-1]
    attended, _ = F.multi_head_attention_forward(
        h, h, h, width, heads,
        w[f"{name}.attn.in_proj_weight"], w[f"{name}.attn.in_proj_bias"],
        None, None, False, 0.0,
        w[f"{name}.attn.out_proj.weight"], w[f"{name}.attn.out_proj.bias"],
        training=False, need_weights=False, attn_mask=mask,
    )  # fmt: skip
    x = x + attended
    h = linear(layer_norm(x, w, f"{name}.ln_2"), w, f"{name}.mlp.c_fc")
    h = h * torch.sigmoid(1.702 * h)
    return x + linear(h, w, f"{name}.mlp.c_proj")


def vit_layers(clip: Tensors, images: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
    """VisionTransformer.forward: list of [B, 1+N, C] after each 1-based block in ``layers``."""
    x = F.conv2d(images, clip["visual.conv1.weight"], stride=clip["visual.conv1.weight"].shape[-1])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = clip["visual.class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1)
    position = clip["visual.positional_embedding"]
    side, new_side = int((position.shape[0] - 1) ** 0.5), int((x.shape[1] - 1) ** 0.5)
    if side != new_side:
        grid = position[1:].reshape(-1, side, side, x.shape[-1]).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, (new_side, new_side), mode="bilinear")
        grid = grid.reshape(x.shape[-1], new_side * new_side).transpose(0, 1)
        position = torch.cat([position[:1], grid], 0)
    x = layer_norm(x + position, clip, "visual.ln_pre").permute(1, 0, 2)
    heads = x.shape[-1] // 64
    out = []
    for index in range(max(layers)):
        x = block(x, clip, f"visual.transformer.resblocks.{index}", heads)
        if index + 1 in layers:
            out.append(x.permute(1, 0, 2))
    return out


def text_tower(clip: Tensors, x: torch.Tensor, adapter=None) -> torch.Tensor:
    """[P, 77, D] embeddings (positional added inside) -> [P, 77, D] after ln_final."""
    x = (x + clip["positional_embedding"]).permute(1, 0, 2)
    mask = torch.full((77, 77), float("-inf")).triu_(1)
    count = len({k.split(".")[2] for k in clip if k.startswith("transformer.resblocks.")})
    for index in range(count):
        x = block(x, clip, f"transformer.resblocks.{index}", x.shape[-1] // 64, mask)
        if adapter is not None and index < 4:
            x = 0.9 * x + 0.1 * adapter(x)
    return layer_norm(x.permute(1, 0, 2), clip, "ln_final")


def cross_attention(x: torch.Tensor, w: Tensors, name: str) -> torch.Tensor:
    """BasicTransformerBlock: CrossAttention(norm(x)), 8 heads of 64."""
    x = layer_norm(x, w, f"{name}.norm")
    q, k, v = (linear(x, w, f"{name}.attn.to_{t}") for t in "qkv")
    b, n, _ = q.shape

    def heads(t: torch.Tensor) -> torch.Tensor:  # 'b n (h d) -> (b h) n d'
        return t.reshape(b, n, 8, -1).permute(0, 2, 1, 3).reshape(b * 8, n, -1)

    sim = torch.einsum("bid,bjd->bij", heads(q), heads(k)) * 64**-0.5
    out = torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), heads(v))
    out = out.reshape(b, 8, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)
    return linear(out, w, f"{name}.attn.to_out.0")


def gaussian(size: int, sigma: float = 4.0) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    x, y = torch.meshgrid(x, x, indexing="ij")
    kernel = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def project(clip: Tensors, tokens: torch.Tensor) -> torch.Tensor:
    return layer_norm(tokens, clip, "visual.ln_post") @ clip["visual.proj"]


def focal(p: torch.Tensor, target: torch.Tensor, gamma: float = 4) -> torch.Tensor:
    p, target = p.float(), target.float()
    p_t = p * target + (1 - p) * (1 - target)
    return (F.binary_cross_entropy(p, target, reduction="none") * (1 - p_t) ** gamma).mean()


def mask_targets(gts: torch.Tensor, size) -> torch.Tensor:
    gts = F.interpolate(gts, size=size, mode="bilinear")
    gts[gts < 0.5] = 0
    gts[gts > 0.5] = 1
    return gts


def final_maps(predict_map: torch.Tensor, size: int) -> np.ndarray:
    """evaluation_pixel: bilinear to the transformed image's size (S x S, whatever the
    file's size), then scipy's Gaussian, sigma 4."""
    maps = F.interpolate(predict_map, size=(size, size), mode="bilinear").numpy()
    return np.stack([gaussian_filter(m, sigma=4) for m in maps])[:, 0]


# -- AF-CLIP ------------------------------------------------------------------------------


def afclip_state_text(clip: Tensors, trained: Tensors, tokens: torch.Tensor) -> torch.Tensor:
    """encode_state_prompt, normalised: [2, E]."""
    context = trained["prompt"]
    x = clip["token_embedding.weight"][tokens]
    x = torch.cat([context.repeat(2, 1, 1), x], dim=1)[:, :77, :]
    x = text_tower(clip, x)
    x = x[torch.arange(2), context.shape[1] + tokens.argmax(dim=-1)] @ clip["text_projection"]
    return F.normalize(x, dim=-1)


def afclip_aggregate(tokens: list[torch.Tensor]) -> list[torch.Tensor]:
    """aggerate_neighbors: per layer, r in 1, 3, 5 with unfold and Gaussian weights."""
    out = []
    for token in tokens:
        for r in (1, 3, 5):
            if r == 1:
                out.append(token)
                continue
            cls, x = token[:, :1], token[:, 1:]
            b, n, c = x.shape
            h = int(math.sqrt(n))
            x = x.reshape(b, h, h, c).permute(0, 3, 1, 2)
            x = F.unfold(x, kernel_size=r, padding=r // 2, stride=1)
            x = x.permute(0, 2, 1).reshape(-1, c, r * r).permute(0, 2, 1)
            x = torch.sum(x * gaussian(r).reshape(1, r * r, 1), dim=1).reshape(b, n, c)
            out.append(torch.cat([cls, x], dim=1))
    return out


def afclip_forward(clip: Tensors, trained: Tensors, tokens, images, layers):
    """detect_forward_seg: (cls prob [B], map prob [B, 1, h, w], adapted tokens)."""
    text = afclip_state_text(clip, trained, tokens)
    sets = afclip_aggregate(vit_layers(clip, images, layers))
    adapted = [project(clip, cross_attention(t, trained, "adaptor.attention")) for t in sets]
    scores = 0
    for token in adapted:
        scores = scores + F.normalize(token, dim=-1) @ text.T / 0.07
    prob = torch.softmax(scores, dim=-1)
    h = int(math.sqrt(prob.shape[1] - 1))
    return prob[:, 0, 1], prob[:, 1:, 1].reshape(-1, 1, h, h), adapted


def afclip_memory(clip: Tensors, support, images, layers, alpha, zero_cls, zero_map):
    """store_memory + detect_forward_memorybank + detect_forward's combination."""
    bank = [F.normalize(t[:, 1:], dim=-1).reshape(-1, t.shape[-1])
            for t in afclip_aggregate(vit_layers(clip, support, layers))]  # fmt: skip
    sets = afclip_aggregate(vit_layers(clip, images, layers))
    scores = 0
    for index, token in enumerate(sets):
        token = F.normalize(token, dim=-1)
        scores = scores + ((1 - token @ bank[index].T).min(dim=-1)[0] / 2)[:, 1:]
    scores = scores / len(sets)
    h = int(math.sqrt(scores.shape[1]))
    return scores.max(dim=-1)[0] + alpha * zero_cls, scores.reshape(-1, 1, h, h) + alpha * zero_map


def afclip_losses(cls_prob, map_prob, adapted, labels, gts, lambda1=1.0, lambda2=1.0):
    """main.py train: focal + lambda1 (focal + l1) + lambda2 alignment (per set, averaged)."""
    gts = mask_targets(gts, map_prob.shape[-2:])
    image = focal(cls_prob, labels)
    map_focal, map_l1 = focal(map_prob, gts), F.l1_loss(map_prob, gts)
    # copy.copy shares the storage: rewriting 0 -> -1 below also rewrites the targets the map
    # focal loss saved for its backward pass (not the values it returned), as in main.py.
    signs = copy.copy(gts.reshape(gts.shape[0], -1))
    if (signs == 0).sum() == 0:
        loss = image + lambda1 * (map_focal + map_l1)
        return {"loss": loss, "image_focal": image, "map_focal": map_focal, "map_l1": map_l1,
                "alignment": torch.tensor(0.0)}  # fmt: skip
    signs[signs == 0] = -1
    mask = signs[:, :, None] @ signs[:, None, :]
    total = 0
    for token in adapted:
        unit = F.normalize(token[:, 1:], dim=-1)
        sim = unit @ unit.transpose(1, 2)
        value = sim[mask == -1].mean() - sim[mask == 1].mean()
        total = total + (value if value > 0 else 0)
    alignment = total / len(adapted)
    loss = image + lambda1 * (map_focal + map_l1) + lambda2 * alignment
    return {"loss": loss, "image_focal": image, "map_focal": map_focal, "map_l1": map_l1,
            "alignment": torch.as_tensor(alignment)}  # fmt: skip


# -- miniCLIP (af_tiny) -------------------------------------------------------------------


def mini_text(clip: Tensors, trained: Tensors, tokens: torch.Tensor) -> torch.Tensor:
    """encode_text_batch for [B, 2, 77] tokens -> [B, 2, E] unit features."""
    b = tokens.shape[0]
    flat = tokens.reshape(b * 2, -1)

    def adapter(x: torch.Tensor) -> torch.Tensor:
        h = F.relu(linear(x, trained, "text_adapter.mlp.0"))
        h = F.relu(linear(h, trained, "text_adapter.mlp.2"))
        return layer_norm(linear(h, trained, "text_adapter.mlp.4"), trained, "text_adapter.ln")

    x = text_tower(clip, clip["token_embedding.weight"][flat], adapter)
    x = x[torch.arange(b * 2), flat.argmax(dim=-1)] @ clip["text_projection"]
    return F.normalize(x, dim=-1).reshape(b, 2, -1)


def mini_image(clip: Tensors, trained: Tensors, images, layers=(5, 7, 9, 10)):
    """encode_image: (cls_token [B, 1, E], img_feature [B, N, E])."""
    tokens = vit_layers(clip, images, list(layers))

    def cls_proj(x: torch.Tensor) -> torch.Tensor:
        h = layer_norm(linear(x, trained, "cls_proj.mlp.0"), trained, "cls_proj.mlp.1")
        h = layer_norm(linear(F.gelu(h), trained, "cls_proj.mlp.3"), trained, "cls_proj.mlp.4")
        s = layer_norm(linear(x, trained, "cls_proj.shortcut.0"), trained, "cls_proj.shortcut.1")
        return s + h

    cls = sum(F.normalize(cls_proj(t[:, 0:1]), dim=-1) for t in tokens[-2:])
    cls = F.normalize(cls, dim=-1)
    sums = []
    for token in tokens:
        patches = token[:, 1:]
        b, n, c = patches.shape
        h = int(math.sqrt(n))
        grid = patches.reshape(b, h, h, c).permute(0, 3, 1, 2)
        windows = [patches]
        for r in (3, 5):
            weight = gaussian(r).view(1, 1, r, r).repeat(c, 1, 1, 1)
            out = F.conv2d(grid, weight, padding=r // 2, groups=c)
            windows.append(out.permute(0, 2, 3, 1).reshape(b, n, c))
        adapted = [w + cross_attention(w, trained, "attn_adapter.attention") for w in windows]
        sums.append(torch.stack([project(clip, a) for a in adapted]).sum(dim=0))
    feature = F.normalize(sum(F.normalize(s, dim=-1) for s in sums), dim=-1)
    return cls, feature


def mini_forward(clip: Tensors, trained: Tensors, tokens, images):
    """forward(image, class_names): (label prob [B], map prob [B, 1, h, w], img_feature)."""
    text = mini_text(clip, trained, tokens)
    cls, feature = mini_image(clip, trained, images)
    label = torch.softmax(torch.einsum("bd,bwd->bw", cls.squeeze(1), text) / 0.07, dim=-1)[:, 1]
    prob = torch.softmax(torch.einsum("bpd,bwd->bpw", feature, text) / 0.07, dim=-1)[:, :, 1]
    h = int(math.sqrt(prob.shape[1]))
    return label, prob.reshape(-1, 1, h, h), feature


def mini_losses(label, predict_map, feature, labels, gts, lambda1=3.0, lambda2=1.0):
    """textual_train / visual_train losses (loss_fn.py)."""
    gts = mask_targets(gts, predict_map.shape[-2:])
    image = focal(label, labels)
    map_focal, map_l1 = focal(predict_map, gts), F.l1_loss(predict_map, gts)
    flat = copy.copy(gts.reshape(feature.shape[0], -1))  # shares storage, as loss_fn.py
    if (flat == 0).sum() == 0:
        alignment = torch.tensor(0.0)
    else:
        flat[flat == 0] = -1
        mask = flat[:, :, None] @ flat[:, None, :]
        sim = feature @ feature.transpose(1, 2)
        same = sim[mask == 1].mean() if (mask == 1).sum() > 0 else torch.tensor(0.0)
        alignment = F.relu(sim[mask == -1].mean() - same) if (mask == -1).sum() > 0 else 0 * same
    loss = image + lambda1 * (map_focal + map_l1) + lambda2 * alignment
    return {"loss": loss, "image_focal": image, "map_focal": map_focal, "map_l1": map_l1,
            "alignment": alignment}  # fmt: skip
