"""Contrastive Mask Refinement Learning (Phoenix Sec. 3.4, eqs. 1-4, Algorithm 2, B.6).

Pixels of the decoder's upscaled embedding F are sorted into six regions by target M_t, noisy input
M_n and refined output M_r (each binarised at 0.5): true (T), success (S: wrong in the input, right in
the output) and failure (F: wrong in both), for foreground and background. The paper says the six
regions partition the image (B.6); they do not: a pixel right in the input and wrong in the output
(``t = n != r``, a refinement that broke it) is in none of them. DECISION: the printed definitions hold;
such pixels take part only as members of Ω (the InfoNCE denominators). Through a projector g
(three 1x1 convolutions with LayerNorm and GELU between, B.6) and L2 normalisation, three terms pull
failures toward correct features of their class (intra), push them from the other class (inter) and
toward the successes (self):

    L_CMRL = λ_intra L_intra + λ_inter L_inter + λ_self L_self   (0.4, 0.4, 0.2)

Each term follows Algorithm 2 (the implementation): InfoNCE with ``logsumexp`` over the positives minus
``logsumexp`` over all pixels Ω for intra and self, and ``mean_i Σ_j softplus(sim / τ)`` against the
correct pixels of the other class for inter (eq. 2 prints a log-sum-exp over F ∪ S ∪ T of the other
class; PHOENIX_FACTS: follow Algorithm 2). Up to 256 pixels are drawn uniformly per region (512 for the
self term's sets). An empty anchor or positive set contributes zero (never NaN) and no gradient.
Pixels in SAM's padding (outside the image) belong to no region and are not in Ω (DECISION).

With SUM's certainty map of a pseudo-target (``--target-uncertainty``), pixels whose target label is not
trusted (c <= θ = 0.6, SUM eq. 2's rule) belong to no region either: which region a pixel is in says
whether its label was reproduced, and that is unknown there. They stay in Ω, which does not depend on
labels (DECISION).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from .config import CMRLConfig

REGIONS = ("T_fg", "T_bg", "S_fg", "S_bg", "F_fg", "F_bg")


def cmrl_regions(target: torch.Tensor, noisy: torch.Tensor, refined: torch.Tensor,
                 valid: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The six regions (bool, same shape as the inputs) of Sec. 3.4; each input is binarised at 0.5
    (bool inputs as they are). Disjoint; together with the pixels a refinement broke (``t = n != r``)
    they cover ``valid``; outside it they are empty."""
    t, n, r = (x > 0.5 if x.dtype != torch.bool else x for x in (target, noisy, refined))
    regions = {
        "T_fg": t & n & r, "T_bg": ~t & ~n & ~r,
        "S_fg": t & ~n & r, "S_bg": ~t & n & ~r,
        "F_fg": t & ~n & ~r, "F_bg": ~t & n & r,
    }
    if valid is not None:
        regions = {name: region & valid for name, region in regions.items()}
    return regions


class Projector(nn.Module):
    """g: ``layers`` 1x1 convolutions of ``channels -> channels`` with LayerNorm and GELU between (B.6)."""

    def __init__(self, channels: int, layers: int = 3):
        super().__init__()
        blocks = []
        for i in range(layers):
            blocks.append(nn.Conv2d(channels, channels, kernel_size=1))
            if i < layers - 1:
                blocks += [LayerNorm2d(channels), nn.GELU()]
        self.net = nn.Sequential(*blocks)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """float ``B x c x h x w`` -> projected, L2-normalised over channels, same shape."""
        return F.normalize(self.net(features), p=2, dim=1)


def sample_pixels(features: torch.Tensor, region: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``count`` rows of float ``N x c`` ``features`` drawn uniformly without replacement from the
    pixels where bool ``N`` ``region`` is set (all of them when fewer)."""
    index = torch.nonzero(region, as_tuple=False).flatten()
    if index.numel() > count:
        order = torch.randperm(index.numel(), generator=generator, device="cpu")[:count].to(index.device)
        index = index[order]
    return features[index]


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, everything: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-mean_i [logsumexp_j(a_i·p_j / τ) - logsumexp_k(a_i·x_k / τ)]`` (eqs. 1, 3 as Algorithm 2 computes
    them); zero when there is no anchor or no positive."""
    if anchors.shape[0] == 0 or positives.shape[0] == 0:
        return anchors.sum() * 0.0 + positives.sum() * 0.0
    positive = torch.logsumexp(anchors @ positives.T / temperature, dim=1)
    total = torch.logsumexp(anchors @ everything.T / temperature, dim=1)
    return -(positive - total).mean()


def repulsion(anchors: torch.Tensor, opposite: torch.Tensor, temperature: float) -> torch.Tensor:
    """``mean_i Σ_j softplus(a_i·o_j / τ)`` (the inter term as Algorithm 2 computes it); zero when either
    set is empty."""
    if anchors.shape[0] == 0 or opposite.shape[0] == 0:
        return anchors.sum() * 0.0 + opposite.sum() * 0.0
    return F.softplus(anchors @ opposite.T / temperature).sum(dim=1).mean()


def cmrl_loss(projected: torch.Tensor, target: torch.Tensor, noisy: torch.Tensor, refined: torch.Tensor,
              valid: torch.Tensor, config: CMRLConfig, generator: torch.Generator,
              certain: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The three CMRL terms and their weighted sum for one image (Algorithm 2, step 3).

    Args:
        projected: float ``c x h x w``, g(F) normalised over channels.
        target, noisy, refined: ``h x w`` masks (bool, or float binarised at 0.5).
        valid: bool ``h x w``: the pixels of the image (Ω).
        generator: draws the pixel samples (CPU generator).
        certain: bool ``h x w``, the pixels whose target label is trusted (SUM: c > θ); None: all.

    Returns:
        ``{"intra", "inter", "self", "total"}`` scalars, ``total = 0.4 intra + 0.4 inter + 0.2 self``.
    """
    labelled = valid if certain is None else valid & certain
    regions = {name: region.flatten() for name, region in cmrl_regions(target, noisy, refined, labelled).items()}
    features = projected.flatten(1).T  # (h w) x c
    everything = features[valid.flatten()]
    per_region, per_set = config.samples_per_region, config.self_samples
    tau = config.temperature
    anchor_fg = sample_pixels(features, regions["F_fg"], per_region, generator)
    anchor_bg = sample_pixels(features, regions["F_bg"], per_region, generator)
    correct_fg = sample_pixels(features, regions["T_fg"] | regions["S_fg"], per_region, generator)
    correct_bg = sample_pixels(features, regions["T_bg"] | regions["S_bg"], per_region, generator)
    intra = info_nce(anchor_fg, correct_fg, everything, tau) + info_nce(anchor_bg, correct_bg, everything, tau)
    inter = repulsion(anchor_fg, correct_bg, tau) + repulsion(anchor_bg, correct_fg, tau)
    success = sample_pixels(features, regions["S_fg"] | regions["S_bg"], per_set, generator)
    failure = sample_pixels(features, regions["F_fg"] | regions["F_bg"], per_set, generator)
    self_term = info_nce(failure, success, everything, tau)
    total = config.intra * intra + config.inter * inter + config.self_improvement * self_term
    return {"intra": intra, "inter": inter, "self": self_term, "total": total}
