"""Does refiner training learn? Two tests on a tiny SAM, trained by tools/train_refiner.py:
- with Phoenix's defaults (AMP noise, CMRL on) for a few CPU minutes, the refiner refines held-out noisy
  masks far better than the same refiner before training;
- with ``--noise morphological`` for ~5 CPU minutes, it refines held-out noisy masks to a higher mean IoU
  than they came in with.

What this shows and what it does not (README, "Phoenix: trained refiners"):
- No real SAM weights exist here. The stand-in for pre-trained SAM is a tiny SAM of the real modules whose
  prompt encoder and mask decoder are fitted to generated shapes from point and box prompts
  (``standin_sam``; its encoder stays random). AMP needs such a decoder: it perturbs what the decoder
  segments for the target's prompts. The stand-in never saw a mask prompt, so before training the refiner
  (points, box and the coarse mask as dense prompt) is poor: what training must teach it is to use the
  coarse mask and correct it.
- Training runs as the product trains (the tool, AMP, CMRL, SAM's losses, the checkpoint format) and the
  evaluation as the product refines (``build_refiner(type="Phoenix")``), on held-out images with a noise the
  AMP trainer never draws (two morphological perturbations and blob noise). "Before" is the same checkpoint
  with the stand-in's untrained prompt encoder and decoder weights.
- It does not show an AMP-trained refiner beating its noisy input (on this stand-in AMP's refiners plateau
  near the stand-in's own segmentation quality: measured numbers in the README), how much Phoenix gains on
  real data, nor that AMP beats morphological noise (the paper's claim): those need real SAM weights and a
  GPU.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from shapes import load_coco_masks, make_shapes_coco
from standin_sam import fit_standin_sam, save_standin
from training_helpers import REPO

from refine_hooks.data.masks import mask_iou
from refine_hooks.refiners import build_refiner
from refine_hooks.sam.refiner_weights import read_refiner_checkpoint
from refine_hooks.training.phoenix.noise import blob_noise, morphological_noise

STANDIN_STEPS = 400
TRAIN_ITERATIONS = 60
# Measured when this test was written (2-core CPU, these seeds, ~3 min): held-out mean IoU before training
# 0.146, after 15 iterations 0.368, after 60 0.455; the noisy input's is 0.634. The test asks
# for half of the gain at 60. AMP's band outcomes in that run: hit 5.6%, missed 28.8%, overshot 65.6%, all of
# those started below τ (amp_started_below 65.6%: the stand-in's own mask is already below the band; README).
MEASURED_GAIN = 0.455 - 0.146
# The refiner trained on morphological noise for 1000 iterations (~5 min): held-out 0.634 -> 0.678 (measured
# outside the test with the same stand-in: clean targets come back at 0.885, the tiny decoder's capacity).
MORPHOLOGICAL_ITERATIONS = 1000
MEASURED_MORPHOLOGICAL_GAIN = 0.678 - 0.634
SAFE_FRACTION = 0.5


def held_out_noise(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two morphological perturbations and blob noise on top: a noise the trainer never draws."""
    return blob_noise(morphological_noise(morphological_noise(mask, rng), rng), rng)


def mean_held_out_iou(refiner, scenes, seed: int = 0):
    """(noisy, refined) mean IoU with the targets over every mask of ``scenes``, one refinement per mask."""
    rng = np.random.default_rng(seed)
    noisy_ious, refined_ious = [], []
    for scene in scenes:
        targets = np.stack(scene["masks"])
        noisy = np.stack([held_out_noise(mask, rng) for mask in targets])
        noisy_ious.append(mask_iou(noisy, targets))
        refined_ious.append(mask_iou(refiner.refine(scene["image"], noisy).masks, targets))
    return float(np.concatenate(noisy_ious).mean()), float(np.concatenate(refined_ious).mean())


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """Generated train / held-out shapes and the fitted stand-in SAM, shared by the tests of this module."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = str(tmp_path_factory.mktemp("learning"))
    train = make_shapes_coco(root, num_images=200, seed=1, name="train")
    held = load_coco_masks(make_shapes_coco(root, num_images=30, seed=2, name="held"), root)
    sam, _ = fit_standin_sam(load_coco_masks(train, root), steps=STANDIN_STEPS, batch=8)
    path = save_standin(sam, os.path.join(root, "standin.pth"))
    return {"root": root, "train": train, "held": held, "sam": sam, "checkpoint": path, "model_type": "tiny", "device": "cpu"}


def train_refiner(standin, out: str, iterations: int, *options: str):
    """Run tools/train_refiner.py on the stand-in; returns the JSON-lines log."""
    command = [sys.executable, os.path.join(REPO, "tools", "train_refiner.py"), "--coco", standin["train"],
               standin["root"], "--model-type", standin["model_type"], "--checkpoint", standin["checkpoint"], "--out", out,
               "--iterations", str(iterations), "--batch-size", "8", "--lr", "2e-3",
               "--cache-dir", os.path.join(standin["root"], "cache"), "--workers", "0", "--no-progress",
               "--device", standin["device"], *options]
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode == 0, run.stderr[-2000:]
    with open(out + ".work/log.jsonl") as handle:
        return [json.loads(line) for line in handle]


def before_training(trained: str, sam, path: str) -> str:
    """The refiner checkpoint ``trained`` (encoding, prompts) holding the stand-in's own weights instead."""
    before = read_refiner_checkpoint(trained)
    state = sam.state_dict()
    before["weights"] = {key: state[key].clone() for key in before["weights"]}
    torch.save(before, path)
    return path


def amp_outcomes(log) -> dict:
    """AMP's band outcomes, each the mean over the log's iterations of the share of noisy masks."""
    return {key: round(float(np.mean([row[key] for row in log])), 4)
            for key in ("amp_hit", "amp_overshot", "amp_missed", "amp_started_below")}


def phoenix(standin, refiner_checkpoint: str):
    return build_refiner(dict(type="Phoenix", model_type=standin["model_type"], checkpoint=standin["checkpoint"],
                              refiner_checkpoint=refiner_checkpoint, iterations=1, device=standin["device"]))


@pytest.mark.timeout(3600)
def test_trained_refiner_refines_held_out_masks_better_than_before_training(standin, tmp_path):
    out = str(tmp_path / "phoenix.pth")
    log = train_refiner(standin, out, TRAIN_ITERATIONS, "--warmup", "5")  # Phoenix's defaults: AMP, CMRL
    assert sum(row["amp_updates_per_mask"] for row in log) > 0  # AMP really perturbed masks
    assert any(row["cmrl"] > 0 for row in log)  # and CMRL took part

    before = before_training(out, standin["sam"], str(tmp_path / "before.pth"))
    results = {}
    for name, path in (("before", before), ("after", out)):
        noisy, results[name] = mean_held_out_iou(phoenix(standin, path), standin["held"])
    outcomes = amp_outcomes(log)
    print(f"held-out mean IoU: noisy {noisy:.3f}, before training {results['before']:.3f}, after {results['after']:.3f}; "
          f"AMP band outcomes {outcomes}")
    assert results["after"] - results["before"] >= SAFE_FRACTION * MEASURED_GAIN, results


@pytest.mark.timeout(3600)
def test_refiner_trained_on_morphological_noise_improves_held_out_noisy_masks(standin, tmp_path):
    """The trainer can make a refiner that beats its input: ``--noise morphological`` (the SegRefiner-style
    baseline) for 1000 iterations (~5 CPU minutes). The held-out noise compounds two morphological draws
    (the kind it trained on, stronger) with blob noise (never trained on)."""
    out = str(tmp_path / "morphological.pth")
    train_refiner(standin, out, MORPHOLOGICAL_ITERATIONS, "--warmup", "10", "--noise", "morphological",
                  "--no-contrastive")
    noisy, refined = mean_held_out_iou(phoenix(standin, out), standin["held"])
    print(f"held-out mean IoU: noisy {noisy:.3f}, refined {refined:.3f}")
    assert refined - noisy >= SAFE_FRACTION * MEASURED_MORPHOLOGICAL_GAIN, (noisy, refined)
