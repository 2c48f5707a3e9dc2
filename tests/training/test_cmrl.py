"""Contrastive Mask Refinement Learning: regions, each term against a direct computation, empty regions,
and the direction one SGD step moves features."""

import math

import pytest
import torch
import torch.nn.functional as F

from refine_hooks.training.phoenix.cmrl import REGIONS, Projector, cmrl_loss, cmrl_regions, info_nce, repulsion
from refine_hooks.training.phoenix.config import CMRLConfig


@pytest.mark.parametrize("seed", range(5))
def test_six_regions_are_disjoint_and_miss_only_the_pixels_a_refinement_broke(seed):
    """B.6 says the six regions partition the image; the two combinations t = n != r are in none of them."""
    g = torch.Generator().manual_seed(seed)
    t, n, r = (torch.rand((17, 23), generator=g) for _ in range(3))  # floats, binarised at 0.5
    valid = torch.rand((17, 23), generator=g) > 0.2
    regions = cmrl_regions(t, n, r, valid)
    assert set(regions) == set(REGIONS)
    count = sum(region.int() for region in regions.values())
    tb, nb, rb = t > 0.5, n > 0.5, r > 0.5
    broken = (tb == nb) & (rb != tb)
    assert bool(broken.any())
    assert torch.equal(count, (valid & ~broken).int())  # each other valid pixel in exactly one region
    assert torch.equal(regions["S_fg"], tb & ~nb & rb & valid)
    assert torch.equal(regions["F_bg"], ~tb & nb & rb & valid)


def _direct_info_nce(anchors, positives, everything, tau):
    total = 0.0
    for a in anchors:
        pos = sum(math.exp(float(a @ p) / tau) for p in positives)
        all_ = sum(math.exp(float(a @ x) / tau) for x in everything)
        total += -math.log(pos / all_)
    return total / len(anchors)


def _direct_repulsion(anchors, opposite, tau):
    return sum(sum(math.log(1 + math.exp(float(a @ o) / tau)) for o in opposite) for a in anchors) / len(anchors)


def test_terms_equal_a_direct_computation_on_hand_made_features():
    """3x3 image, 2 channels: every region small enough that no sampling happens."""
    target = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    noisy = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    refined = torch.tensor([[1, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    # T_fg: (0,0),(1,1); S_fg: (0,1); F_fg: (1,0); F_bg: (0,2); S_bg: (2,2); T_bg: (1,2),(2,0),(2,1)
    angles = torch.arange(9, dtype=torch.float64) * 0.7
    features = torch.stack([angles.cos(), angles.sin()]).reshape(2, 3, 3)  # unit vectors
    valid = torch.ones((3, 3), dtype=torch.bool)
    config = CMRLConfig(temperature=0.5)
    loss = cmrl_loss(features, target, noisy, refined, valid, config, torch.Generator().manual_seed(0))
    flat = features.reshape(2, -1).T
    at = lambda *cells: flat[[3 * y + x for y, x in cells]]  # noqa: E731
    tau = 0.5
    f_fg, f_bg = at((1, 0)), at((0, 2))
    correct_fg, correct_bg = at((0, 0), (1, 1), (0, 1)), at((1, 2), (2, 0), (2, 1), (2, 2))
    intra = _direct_info_nce(f_fg, correct_fg, flat, tau) + _direct_info_nce(f_bg, correct_bg, flat, tau)
    inter = _direct_repulsion(f_fg, correct_bg, tau) + _direct_repulsion(f_bg, correct_fg, tau)
    self_term = _direct_info_nce(torch.cat([f_fg, f_bg]), at((0, 1), (2, 2)), flat, tau)
    assert float(loss["intra"]) == pytest.approx(intra, rel=1e-9)
    assert float(loss["inter"]) == pytest.approx(inter, rel=1e-9)
    assert float(loss["self"]) == pytest.approx(self_term, rel=1e-9)
    assert float(loss["total"]) == pytest.approx(0.4 * intra + 0.4 * inter + 0.2 * self_term, rel=1e-9)


def test_empty_regions_give_a_finite_loss_and_no_gradient_from_them():
    features = F.normalize(torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(1)), dim=0).requires_grad_(True)
    target = torch.zeros((8, 8), dtype=torch.bool)
    target[2:6, 2:6] = True
    # The refined mask equals the target: no failure region, so every term has no anchor.
    loss = cmrl_loss(features, target, target, target, torch.ones((8, 8), dtype=torch.bool), CMRLConfig(),
                     torch.Generator().manual_seed(0))
    assert all(math.isfinite(float(v.detach())) for v in loss.values())
    assert float(loss["total"].detach()) == 0.0
    loss["total"].backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    assert float(info_nce(torch.zeros((0, 4)), torch.ones((3, 4)), torch.ones((5, 4)), 0.1)) == 0.0
    assert float(repulsion(torch.ones((2, 4)), torch.zeros((0, 4)), 0.1)) == 0.0


def _sgd_step(features, loss_fn, lr=0.05):
    features = features.clone().requires_grad_(True)
    loss_fn(features).backward()
    with torch.no_grad():
        return F.normalize(features - lr * features.grad, dim=-1)


def test_one_sgd_step_moves_features_the_way_each_term_says():
    g = torch.Generator().manual_seed(2)
    anchors, positives, others = (F.normalize(torch.randn((n, 6), generator=g), dim=-1) for n in (5, 7, 9))
    tau = 0.1

    def mean_similarity(a, b):
        return float((a @ b.T).mean())

    # intra / self (InfoNCE): anchors move toward the positives.
    everything = torch.cat([anchors, positives, others])
    moved = _sgd_step(anchors, lambda a: info_nce(a, positives, torch.cat([a, positives, others]), tau))
    assert mean_similarity(moved, positives) > mean_similarity(anchors, positives)
    assert everything.shape[0] == 21
    # inter (repulsion): anchors move away from the other class.
    moved = _sgd_step(anchors, lambda a: repulsion(a, others, tau))
    assert mean_similarity(moved, others) < mean_similarity(anchors, others)


def test_projector_normalises_and_samples_at_most_the_cap():
    projector = Projector(channels=4, layers=3)
    out = projector(torch.randn(2, 4, 5, 5))
    assert out.shape == (2, 4, 5, 5)
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 5, 5), atol=1e-5)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in projector.modules()) == 3
    # A large region is sampled down to samples_per_region; the loss stays finite.
    target = torch.zeros((64, 64), dtype=torch.bool)
    target[:, :40] = True
    noisy = torch.zeros((64, 64), dtype=torch.bool)
    noisy[:, 20:] = True
    features = F.normalize(torch.randn((4, 64, 64)), dim=0)
    loss = cmrl_loss(features, target, noisy, noisy, torch.ones((64, 64), dtype=torch.bool),
                     CMRLConfig(samples_per_region=16, self_samples=32), torch.Generator().manual_seed(0))
    assert all(math.isfinite(float(v)) for v in loss.values()) and float(loss["inter"]) > 0
