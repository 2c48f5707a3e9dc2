"""SAMRefiner++'s IoU adaption: the LoRA, the ranking loss, training and adapter files (tiny random SAM)."""

import numpy as np
import pytest
import torch

from refine_hooks.refiners import build_samrefiner
from refine_hooks.sam import SamEngine, build_tiny_sam, save_tiny_checkpoint
from refine_hooks.sam.iou_adaption import LoRALinear, add_iou_lora, iou_lora, load_iou_adapter, lora_parameters
from refine_hooks.training import IoUAdaptionConfig, IoUAdaptionTrainer
from refine_hooks.training.iou_adaption import positive_candidate, ranking_loss


def samples(count=3, seed=0):
    """Generated images with 2-3 rectangle / ellipse coarse masks each."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:48, :64]
    for _ in range(count):
        image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        masks = []
        for k in range(int(rng.integers(2, 4))):
            y0, x0 = int(rng.integers(0, 30)), int(rng.integers(0, 40))
            h, w = int(rng.integers(8, 18)), int(rng.integers(8, 24))
            if k % 2:
                masks.append(((yy - y0 - h / 2) / (h / 2)) ** 2 + ((xx - x0 - w / 2) / (w / 2)) ** 2 <= 1)
            else:
                mask = np.zeros((48, 64), bool)
                mask[y0:y0 + h, x0:x0 + w] = True
                masks.append(mask)
        out.append((image, np.stack(masks)))
    return out


def decode(engine, image, box):
    embedding = engine.encode([image])[0]
    return engine.decode(embedding, boxes=torch.tensor([box], dtype=torch.float32))


def test_fresh_lora_changes_nothing_and_only_lora_trains():
    image, _ = samples(1)[0]
    engine = SamEngine(build_tiny_sam(seed=0))
    before = decode(engine, image, [5.0, 6.0, 40.0, 30.0])
    layer = add_iou_lora(engine.model)
    assert isinstance(iou_lora(engine.model), LoRALinear) and layer.rank == 4
    after = decode(engine, image, [5.0, 6.0, 40.0, 30.0])
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    with pytest.raises(ValueError, match="already"):
        add_iou_lora(engine.model)


def test_ranking_loss_is_the_authors_margin_ranking_loss():
    predicted = torch.tensor([0.5, 0.6, 0.2])
    assert float(ranking_loss(predicted, 0, 0.02)) == pytest.approx(0.12)  # 0.6 outranks: 0.02 + 0.1; 0.2 does not
    reference = torch.nn.MarginRankingLoss(margin=0.02, reduction="sum")
    one = torch.ones(1)
    expected = reference(predicted[2:3], predicted[0:1], one) + reference(predicted[2:3], predicted[1:2], one)
    assert float(ranking_loss(predicted, 2, 0.02)) == pytest.approx(float(expected))


def test_positive_candidate_is_the_best_iou_with_the_coarse_mask_first_among_ties():
    coarse = torch.zeros(10, 10, dtype=torch.bool)
    coarse[2:8, 2:8] = True
    candidates = torch.zeros(3, 10, 10, dtype=torch.bool)
    candidates[0, 0:10, 0:10] = True  # IoU 36/100
    candidates[1, 2:8, 2:7] = True  # IoU 30/36
    candidates[2, 2:8, 3:8] = True  # IoU 30/36: a tie with 1
    positive, ious = positive_candidate(candidates, coarse)
    assert positive == 1
    assert ious.tolist() == pytest.approx([0.36, 30 / 36, 30 / 36])


def test_training_steps_schedule_and_frozen_weights():
    data = samples(4)
    masks_total = sum(m.shape[0] for _, m in data)
    engine = SamEngine(build_tiny_sam(seed=0))
    frozen = {k: v.clone() for k, v in engine.model.state_dict().items()}
    config = IoUAdaptionConfig(accumulate=3, milestones=(1, 2), epochs=2)
    trainer = IoUAdaptionTrainer(engine, config)
    log = trainer.train(data)
    assert log.samples == 2 * masks_total
    assert log.steps == 2 * (masks_total // 3) and log.leftover == 2 * (masks_total % 3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # two milestones passed
    assert len(log.agreement) == 2
    for key, value in engine.model.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base.", ".")
        assert torch.equal(value, frozen[key]), key
    layer = iou_lora(engine.model)
    assert layer.lora_B.abs().sum() > 0  # the LoRA moved
    assert all(not p.requires_grad for p in engine.model.parameters())


def test_training_lowers_the_ranking_loss():
    data = samples(3)
    engine = SamEngine(build_tiny_sam(seed=0))
    trainer = IoUAdaptionTrainer(engine, IoUAdaptionConfig(accumulate=1, lr=0.05, momentum=0.0, weight_decay=0.0,
                                                           milestones=(), epochs=1))

    def mean_loss():
        losses = []
        for image, masks in data:
            embedding = engine.encode([image])[0]
            for mask in masks:
                with torch.no_grad():
                    losses.append(float(trainer.sample_loss(embedding, mask)[0]))
        return np.mean(losses)

    before = mean_loss()
    assert before > 0  # otherwise there is nothing to learn and the test says nothing
    for _ in range(8):
        trainer.train(data)
    assert mean_loss() < before


def test_adapter_file_round_trip_and_refiner(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pth")
    engine = SamEngine(build_tiny_sam(seed=0))
    trainer = IoUAdaptionTrainer(engine, IoUAdaptionConfig(accumulate=2))
    trainer.train(samples(2))
    path = trainer.save(tmp_path / "adapter.pth", model_type="tiny", checkpoint=str(checkpoint))
    image, _ = samples(1, seed=5)[0]
    expected = decode(engine, image, [3.0, 4.0, 50.0, 40.0])

    refiner = build_samrefiner(model_type="tiny", checkpoint=str(checkpoint), iou_adapter=str(path), iterations=1)
    got = decode(refiner.engine, image, [3.0, 4.0, 50.0, 40.0])
    assert torch.equal(expected[1], got[1]) and torch.equal(expected[0], got[0])
    plain = decode(SamEngine(build_tiny_sam(seed=0)), image, [3.0, 4.0, 50.0, 40.0])
    assert not torch.equal(plain[1], got[1])  # the adapter changes the IoU predictions

    other = build_tiny_sam(seed=1)
    with pytest.raises(ValueError, match="another SAM"):
        load_iou_adapter(other, path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable IoU adapter"):
        load_iou_adapter(build_tiny_sam(seed=0), tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="add_iou_lora"):
        lora_parameters(build_tiny_sam(seed=0))


def test_command_lines_train_and_use_an_adapter(tmp_path):
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    demo = os.path.join(repo, "tools", "demo_data")
    checkpoint = str(save_tiny_checkpoint(tmp_path / "tiny.pth"))
    adapter = tmp_path / "adapter.pth"
    done = subprocess.run([sys.executable, os.path.join(repo, "tools", "train_iou_adaption.py"),
                           os.path.join(demo, "coarse.json"), "--images", os.path.join(demo, "images"),
                           "--model-type", "tiny", "--checkpoint", checkpoint, "--device", "cpu", "--out", str(adapter),
                           "--accumulate", "2", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steps" in done.stdout and adapter.is_file()
    state = torch.load(adapter, weights_only=True)
    with open(os.path.join(demo, "coarse.json")) as f:
        coarse = json.load(f)
    assert state["metadata"]["log"]["samples"] == sum(1 for a in coarse["annotations"] if not a.get("iscrowd", 0))

    out = tmp_path / "refined.json"
    done = subprocess.run([sys.executable, os.path.join(repo, "tools", "refine_pseudo_labels.py"),
                           os.path.join(demo, "coarse.json"), "--images", os.path.join(demo, "images"), "--out", str(out),
                           "--model-type", "tiny", "--checkpoint", checkpoint, "--device", "cpu", "--iou-adapter",
                           str(adapter), "--iterations", "1", "--limit", "1", "--workers", "0", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file()
