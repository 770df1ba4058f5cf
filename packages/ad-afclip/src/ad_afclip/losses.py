"""AF-CLIP's composite objective (Sec. 3.4): focal on the image score, focal + L1 (or dice)
on the patch map, and a patch alignment term that pulls same-state patches together.

Losses take the logit difference d = logit(abnormal) - logit(normal), so that
p = softmax(...)[abnormal] = sigmoid(d) and log p = logsigmoid(d) stay finite and autocast-safe
(the paper's focal loss). The released training instead takes p from a softmax over the two
logits and the log through PyTorch's binary cross-entropy, which clamps it at -100: once p
rounds to 1 in float32 (d above about 16.6) a normal element costs 100 instead of d, and the
softmax's backward sends 1e12-scaled gradients through the normal logit alone
(:func:`released_focal_loss`, which therefore takes both logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logit: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017) without alpha: mean of -(1 - p_t)^gamma log p_t,
    from the logit difference alone: log p_t by log-sigmoid and 1 - p_t as sigmoid(-+d), so
    neither the value nor the gradient saturates where p rounds to 1 in float32."""
    logit, target = logit.float(), target.float()
    log_p_t = target * F.logsigmoid(logit) + (1 - target) * F.logsigmoid(-logit)
    # exp(logsigmoid): the sigmoid with a gradient that does not round to 0 at saturation
    one_minus_p_t = target * F.logsigmoid(-logit).exp() + (1 - target) * F.logsigmoid(logit).exp()
    return (-(one_minus_p_t**gamma) * log_p_t).mean()


def released_probability(logits: torch.Tensor) -> torch.Tensor:
    """[..., 2] logits (normal, abnormal) -> p(abnormal) [...] as the released code takes it:
    ``softmax(logits)[..., 1]`` in float32 (its backward is the softmax's, at saturation too)."""
    return torch.softmax(logits.float(), dim=-1)[..., 1]


def released_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 4.0
) -> torch.Tensor:
    """The released focal loss (AF-CLIP ``main.py``, af_tiny ``utils/loss_fn.py``) on [..., 2]
    logits: mean of ``binary_cross_entropy(p, t) * (1 - p_t)^gamma`` with p from
    :func:`released_probability`; PyTorch clamps each log at -100 (value) and divides its
    gradient by max(p (1 - p), 1e-12). Equal to :func:`focal_loss` of the difference until p
    saturates in float32."""
    target = target.float()
    probability = released_probability(logits)
    p_t = probability * target + (1 - probability) * (1 - target)
    bce = F.binary_cross_entropy(probability, target, reduction="none")
    return (bce * (1 - p_t) ** gamma).mean()


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
    batches with at least one normal element are rewritten, as theirs. ``logit``: the
    difference [...] (p = sigmoid), or the [..., 2] logits (p as :func:`released_probability`,
    so that the extra gradient takes the released softmax's path at saturation too).
    """
    target = target.float()
    normal = (target == 0).float()
    if not bool(normal.any()):
        return logit.new_zeros((), dtype=torch.float32)
    pair = logit.dim() == target.dim() + 1  # [..., 2] logits
    probability = released_probability(logit) if pair else torch.sigmoid(logit.float())
    p = probability.detach()
    if pair:
        bce = F.binary_cross_entropy(p, torch.zeros_like(p), reduction="none")  # clamped
    else:
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
