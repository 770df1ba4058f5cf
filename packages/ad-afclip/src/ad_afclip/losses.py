"""AF-CLIP's composite objective (Sec. 3.4): focal on the image score, focal + L1 (or dice)
on the patch map, and a patch alignment term that pulls same-state patches together.

Losses take the logit difference d = logit(abnormal) - logit(normal), so that
p = softmax(...)[abnormal] = sigmoid(d) and log p = logsigmoid(d) stay finite and autocast-safe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logit: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017) without alpha: mean of -(1 - p_t)^gamma log p_t."""
    logit, target = logit.float(), target.float()
    probability = torch.sigmoid(logit)
    log_p_t = target * F.logsigmoid(logit) + (1 - target) * F.logsigmoid(-logit)
    p_t = target * probability + (1 - target) * (1 - probability)
    return (-((1 - p_t) ** gamma) * log_p_t).mean()


def released_focal_gradient(
    logit: torch.Tensor, target: torch.Tensor, gamma: float = 4.0
) -> torch.Tensor:
    """Zero-valued term that turns :func:`focal_loss`'s gradient into the released training's.

    Both authors' training loops compute the patch alignment loss after the map focal loss,
    and that function rewrites the 0/1 targets to -1/1 in place through ``copy.copy``, which
    shares the tensor's storage (AF-CLIP ``main.py``, af_tiny ``utils/loss_fn.py``). The focal
    loss's value is already computed, but its backward pass reads the rewritten targets: on
    each normal element (t = 0 -> -1) d/dp grows by p^gamma / (p (1 - p)) (the BCE term) +
    gamma * bce * p^(gamma - 1) (the modulating factor), with torch's clamps (p (1 - p) >=
    1e-12, bce <= 100). This adds exactly that, averaged like the loss; the value is 0. Only
    batches with at least one normal element are rewritten, as theirs.
    """
    target = target.float()
    normal = (target == 0).float()
    if not bool(normal.any()):
        return logit.new_zeros((), dtype=torch.float32)
    probability = torch.sigmoid(logit.float())
    p = probability.detach()
    bce = (-F.logsigmoid(-logit.detach().float())).clamp_max(100.0)
    extra = p**gamma / (p * (1 - p)).clamp_min(1e-12) + gamma * bce * p ** (gamma - 1)
    return (normal * extra * (probability - p)).mean()


def l1_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between the map's probabilities and the mask (authors' code)."""
    return (torch.sigmoid(logit.float()) - target.float()).abs().mean()


def dice_loss(logit: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice over each image's map, averaged: 1 - (2|P.G| + eps) / (|P| + |G| + eps)."""
    probability = torch.sigmoid(logit.float()).flatten(1)
    target = target.float().flatten(1)
    overlap = (probability * target).sum(dim=1)
    total = probability.sum(dim=1) + target.sum(dim=1)
    return (1 - (2 * overlap + eps) / (total + eps)).mean()


def patch_alignment_loss(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[S, B, N, E] adapted patch tokens, [B, N] patch targets (0, 1, or 0.5) -> scalar.

    Per token set: relu(mean cos over pairs of opposite state - mean cos over pairs of the
    same state), pairs taken within each image and pooled over the batch (self-pairs
    included, as the authors); averaged over the sets. Targets of 0.5 belong to neither
    state (their products with +-1 are neither 1 nor -1 in the authors' pair mask). Zero
    when no image has both states. Computed from per-state sums, since
    sum_{i in A, j in B} <x_i, x_j> = <sum_A x, sum_B x>, so no N x N matrix is built.
    """
    unit = F.normalize(tokens.float(), dim=-1)
    abnormal_mask = (labels == 1).float()  # [B, N]
    normal_mask = (labels == 0).float()
    sum_abnormal = (unit * abnormal_mask[None, :, :, None]).sum(dim=2)  # [S, B, E]
    sum_normal = (unit * normal_mask[None, :, :, None]).sum(dim=2)
    count_abnormal = abnormal_mask.sum(dim=1)  # [B]
    count_normal = normal_mask.sum(dim=1)
    cross_pairs = (2 * count_abnormal * count_normal).sum()
    if cross_pairs == 0:
        return tokens.new_zeros((), dtype=torch.float32)
    same_pairs = (count_abnormal**2 + count_normal**2).sum()
    cross = 2 * (sum_abnormal * sum_normal).sum(dim=(1, 2)) / cross_pairs  # [S]
    same = (
        (sum_abnormal * sum_abnormal).sum(dim=(1, 2)) + (sum_normal * sum_normal).sum(dim=(1, 2))
    ) / same_pairs
    return F.relu(cross - same).mean()
