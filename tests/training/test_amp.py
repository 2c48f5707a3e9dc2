"""Adversarial Mask Perturbation: Algorithm 1's band logic, FGSM's direction, and the frozen SAM decoder."""

import collections
import copy

import numpy as np
import pytest
import torch

from refine_hooks.sam import SamEngine, build_tiny_sam
from refine_hooks.training.phoenix.amp import (DONE, HIT, MISSED, OVERSHOT, RESTORE, UPDATE, BandSearch,
                                               adversarial_criterion, guidance_masks, masked_iou, perturb)
from refine_hooks.training.phoenix.config import AMPConfig, TrainingConfig
from refine_hooks.training.phoenix.data import Sample, SampleSeeds, TargetRef
from refine_hooks.training.phoenix.step import RefinerStep, low_res_frame_masks


def run_script(ious, tau=0.5, **config):
    """Feed a scripted IoU sequence to a BandSearch; returns its actions and the search."""
    search = BandSearch(tau, AMPConfig(**config))
    actions = []
    for iou in ious:
        actions.append(search.observe(iou))
        if actions[-1] == DONE:
            break
    return actions, search


def test_band_hit_after_updates():
    actions, search = run_script([0.9, 0.8, 0.7, 0.6, 0.52])
    assert actions == [UPDATE, UPDATE, UPDATE, UPDATE, DONE]
    assert (search.outcome, search.result, search.updates, search.alpha) == (HIT, 4, 4, 0.01)


def test_overshoot_restores_previous_embeddings_with_a_tenth_of_the_step():
    # 0.8 -> update -> 0.4 (below τ = 0.5): α /= 10, restore, evaluate the restored E_p again (0.8).
    actions, search = run_script([0.9, 0.8, 0.4, 0.8, 0.6, 0.53])
    assert actions == [UPDATE, UPDATE, RESTORE, UPDATE, UPDATE, DONE]
    assert search.alpha == pytest.approx(0.001) and search.decays == 1
    assert (search.outcome, search.result) == (HIT, 5)


def test_decays_stop_after_the_maximum_and_return_the_mask_closest_to_the_band():
    # Every pass overshoots; after 3 decays the search ends with the closest evaluation (0.47 at index 4).
    ious = [0.9, 0.3, 0.9, 0.45, 0.9, 0.47, 0.9, 0.2]
    actions, search = run_script(ious, max_decays=3)
    assert actions == [UPDATE, RESTORE, UPDATE, RESTORE, UPDATE, RESTORE, UPDATE, DONE]
    assert search.decays == 3 and search.alpha == pytest.approx(1e-5)
    assert (search.outcome, search.result) == (OVERSHOT, 5)
    assert search.updates == 4


def test_still_above_the_band_after_n_evaluations_is_missed():
    ious = [0.95, 0.94, 0.93, 0.92]
    actions, search = run_script(ious, inner_steps=4)
    # N = 4 evaluations: updates after the first three; the 4th update is never evaluated by Algorithm 1.
    assert actions == [UPDATE, UPDATE, UPDATE, DONE]
    assert (search.outcome, search.result, search.updates) == (MISSED, 3, 3)


def test_below_the_band_before_any_update_ends_at_once():
    actions, search = run_script([0.1])
    assert actions == [DONE] and (search.outcome, search.result, search.updates) == (OVERSHOT, 0, 0)
    assert search.started_below


@pytest.mark.parametrize("ious", [[0.9, 0.3, 0.9, 0.45, 0.9, 0.47, 0.9, 0.2], [0.52], [0.95, 0.94, 0.93, 0.92]])
def test_a_search_starting_in_or_above_the_band_did_not_start_below(ious):
    """Overshooting after updates, a hit at once and a miss all started at or above τ."""
    _, search = run_script(ious, inner_steps=4)
    assert search.outcome is not None and not search.started_below


def test_inner_counter_restarts_after_a_restore():
    # N = 3: 0.9 0.8 (updates), 0.3 (restore), then 0.8 0.7 0.65: three evaluations of the new pass -> missed.
    actions, search = run_script([0.9, 0.8, 0.3, 0.8, 0.7, 0.65], inner_steps=3)
    assert actions == [UPDATE, UPDATE, RESTORE, UPDATE, UPDATE, DONE]
    assert search.outcome == MISSED


# ----------------------------------------------------------------------------- FGSM on constructed decoders
def _linear_decoder(base: torch.Tensor, weights: torch.Tensor, calls: list):
    """logits(E_p) = base + Σ_k E_p[k] w_k (w >= 0): every pixel's logit rises with every token entry."""
    def decode(perturbation, indices):
        logits = base[indices] + torch.einsum("bpc,pchw->bhw", perturbation, weights)
        calls.append((perturbation.detach().clone(), indices, (logits.detach() > 0).clone()))
        return logits
    return decode


@pytest.mark.parametrize("guidance, grows", [("expansion", True), ("contraction", False)])
def test_fgsm_steps_grow_masks_toward_expansion_and_shrink_them_toward_contraction(guidance, grows):
    rng = torch.Generator().manual_seed(0)
    size, tokens, channels = 24, 3, 4
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = ((yy - 12.0) ** 2 + (xx - 12.0) ** 2).sqrt()
    base = (6.0 - radius)[None].repeat(2, 1, 1)  # a disk of radius 6
    weights = torch.rand((tokens, channels, size, size), generator=rng) * 0.5
    target = base > 0
    calls = []
    config = AMPConfig(num_tokens=tokens, step_size=0.05, inner_steps=30, max_decays=2)
    result = perturb(_linear_decoder(base, weights, calls), torch.zeros((2, tokens, channels)), target,
                     guidance_masks([guidance, guidance], target), torch.ones((2, size, size)), [0.3, 0.6], config)
    history = {0: [], 1: []}  # per mask: (E_p, mask) of each evaluation
    steps = 0
    for perturbation, indices, masks in calls:
        for row, i in enumerate(indices):
            now_p, now_mask = perturbation[row], masks[row]
            earlier = history[i]
            restored = any(torch.equal(now_p, p) for p, _ in earlier)
            if earlier and not restored:  # an FGSM step from the previous evaluation
                previous_p, previous_mask = earlier[-1]
                delta = now_p - previous_p
                assert bool((delta > 0).all()) if grows else bool((delta < 0).all())
                if grows:
                    assert bool((now_mask | previous_mask).eq(now_mask).all())  # now ⊇ previous
                else:
                    assert bool((now_mask & previous_mask).eq(now_mask).all())  # now ⊆ previous
                steps += 1
            earlier.append((now_p, now_mask))
    assert steps > 4
    assert result.outcomes.count(HIT) + result.outcomes.count(MISSED) + result.outcomes.count(OVERSHOT) == 2


def test_inversion_guidance_and_criteria():
    target = torch.zeros((1, 4, 4), dtype=torch.bool)
    target[0, :2] = True
    inversion = guidance_masks(["inversion"], target)
    assert torch.equal(inversion[0], 1.0 - target[0].float())
    probabilities = torch.full((1, 4, 4), 0.5)
    weights = torch.ones((1, 4, 4))
    dice = adversarial_criterion("dice", probabilities, inversion, weights)
    assert float(dice) == pytest.approx(1 - (2 * 0.5 * 8 + 1) / (8 + 8 + 1))
    assert float(adversarial_criterion("mse", probabilities, inversion, weights)) == pytest.approx(0.25)
    # Pixels with weight 0 do not count.
    assert float(masked_iou(torch.ones((1, 4, 4), dtype=torch.bool), target, target.float())) == 1.0


# ----------------------------------------------------------------------------- the real frozen SAM decoder
def _sample(image, target, slot):
    return Sample(image=image, target=target, ref=TargetRef(0, slot, 0), seeds=SampleSeeds(0, 0, slot), flipped=False, path="x")


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    image = (rng.random((80, 96, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:80, :96]
    targets = [((yy - 40) / 20) ** 2 + ((xx - 45) / 25) ** 2 < 1, (yy > 10) & (yy < 50) & (xx > 20) & (xx < 70),
               ((yy - 50) / 15) ** 2 + ((xx - 60) / 15) ** 2 < 1]
    return image, targets


def test_amp_leaves_the_decoder_untouched_and_batched_equals_one_at_a_time(scene):
    """On the real tiny SAM decoder in float64 (so that batch composition cannot flip a threshold):
    AMP for three masks at once gives each the noisy mask it gets alone; SAM's weights stay bit-identical."""
    image, targets = scene
    sam = build_tiny_sam(seed=3)
    sam.mask_decoder.double()  # SAM's prompt encoder computes in float32 whatever its weights
    before = copy.deepcopy(sam.state_dict())
    # A random decoder's masks overlap the targets a little: a band near 0 gives AMP steps to take.
    config = TrainingConfig(batch_invariant=False, amp=AMPConfig(step_size=0.05, tau_range=(0.0, 0.02)))

    def noisy_masks(indices):
        engine = SamEngine(sam, batch_invariant=False)
        trained = torch.nn.ModuleDict({"prompt_encoder": copy.deepcopy(sam.prompt_encoder),
                                       "mask_decoder": copy.deepcopy(sam.mask_decoder)})
        step = RefinerStep(engine, trained, None, config)
        counts = collections.defaultdict(float)
        prepared = step.prepare([_sample(image, targets[i], i) for i in indices], counts)
        for item in prepared:
            item.embedding.features = item.embedding.features.double()
        step._adversarial([(item, item.sample.seeds.numpy(1)) for item in prepared], counts)
        return [item.noisy for item in prepared], counts

    together, counts = noisy_masks([0, 1, 2])
    alone = [noisy_masks([i])[0][0] for i in range(3)]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a, b)
    assert counts["amp_masks"] == 3 and counts["amp_updates"] >= 3
    assert counts["amp_started_below"] == 0  # τ ~ U(0, 0.02): no mask can start below it
    after = sam.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_low_res_targets_follow_sams_frame(scene):
    image, targets = scene
    engine = SamEngine(build_tiny_sam())
    from refine_hooks.training.phoenix.embeddings import encode_for_training

    embedding = encode_for_training(engine, image, None)
    low = low_res_frame_masks(engine, embedding, targets[0])
    assert low.shape == engine.mask_input_size and low.dtype == torch.bool
    # Upsampling the low-res mask (as logits +-1) back to the image gives the target up to its border.
    back = engine.upsample_masks(low.float()[None] * 2 - 1, embedding)[0]
    agreement = (back == targets[0]).mean()
    assert agreement > 0.95
