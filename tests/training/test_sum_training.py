"""SUM's uncertainty-aware training in the refiner trainer (``--target-uncertainty``) and its task prompt.

The certainty maps of pseudo-targets are computed once and reused; the certainty that reaches the loss is
the map flipped with its sample and resized like its target; c = 1 changes no loss and c = 0 takes a
pixel's label out of every loss term and gradient; ``sam`` noise draws its point by c. The task prompt
starts at zero (no change), trains when tasks are mixed, is saved, and the Phoenix refiner adds it.
"""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refine_hooks.data.windows import WindowedMap
from refine_hooks.jobs import JobOptions, refine_annotation_file
from refine_hooks.refiners import SAMRefiner, build_refiner
from refine_hooks.sam import SamEngine, build_sam_model, build_tiny_sam
from refine_hooks.sam.refiner_weights import TASKS, read_refiner_checkpoint
from refine_hooks.training.phoenix import (CocoSource, FolderPairSource, RefinerTrainer, SelfSupervisedConfig,
                                           TrainingData, UnlabeledSource, train_refiner)
from refine_hooks.training.phoenix import step as step_module
from refine_hooks.training.phoenix.certainty import certainty_file_name, compute_target_uncertainty, load_refiner_config
from refine_hooks.training.phoenix.config import SamNoiseConfig
from refine_hooks.training.phoenix.noise import sam_pseudo_label
from refine_hooks.training.phoenix.step import LOSS_TERMS
from refine_hooks.training.phoenix.tasks import ENTITY, PSEUDO, SALIENT_OBJECT
from refine_hooks.uncertainty import KIND_UNCERTAINTY, MapFile
from shapes import make_shapes_coco, make_shapes_pairs
from training_helpers import REPO, quick_config

SILENT = dict(progress=False, log=lambda message: None, workers=0)
LOOSE = SelfSupervisedConfig(min_predicted_iou=-1e9, min_stability=0.0)  # a random SAM has no confident mask
REFINER = {"type": "SAMRefiner", "iterations": 2}


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    """A folder of 4 generated 64x80 images (no annotations)."""
    root = str(tmp_path_factory.mktemp("unlabeled"))
    make_shapes_coco(root, num_images=4, size=(64, 80), seed=11, name="images")
    return os.path.join(root, "images")


@pytest.fixture(scope="module")
def sum_run(tmp_path_factory, unlabeled, shapes_data, tiny_sam_file):
    """Unlabeled images with certainty maps (SAMRefiner) plus COCO targets: pseudo and entity tasks mixed."""
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("sum") / "sum.pth")
    config = quick_config(iterations=4, self_supervised=LOOSE, noise="morphological", target_uncertainty=dict(REFINER))
    notes = []
    train_refiner(TrainingData(unlabeled=[unlabeled], coco=[shapes_data]), out, config, model_type="tiny",
                  checkpoint=tiny_sam_file, workers=0, progress=False, log=notes.append)
    return {"out": out, "work": out + ".work", "config": config, "notes": notes,
            "maps": os.path.join(out + ".work", certainty_file_name(0, REFINER))}


def unlabeled_source(sum_run, unlabeled):
    source = UnlabeledSource(unlabeled, os.path.join(sum_run["work"], "pseudo_targets_0.json"))
    source.attach_uncertainty(sum_run["maps"])
    source.check(False)
    return source


def coco_trainer(shapes_data, tiny_sam_file, tmp_path, **overrides):
    source = CocoSource(*shapes_data)
    source.check(False)
    values = dict(noise="morphological", hflip=0.5, colour_jitter=0.0, prompt_dropout=0.0)
    values.update(overrides)
    return RefinerTrainer(build_sam_model("tiny", tiny_sam_file), [source], quick_config(**values),
                          work_dir=str(tmp_path / "work"), workers=0)


def loss_and_gradients(trainer, samples):
    trainer.optimizer.zero_grad(set_to_none=True)
    result = trainer.step_fn(samples, trainer.config.batch_size)
    result.loss.backward()
    return result, [p.grad.clone() for p in trainer.parameters if p.grad is not None]


# ----------------------------------------------------------------------------- the maps
def test_certainty_maps_are_computed_once_per_pseudo_target_and_reused(sum_run, unlabeled, shapes_data, tiny_sam_file):
    maps = MapFile(sum_run["maps"], kind=KIND_UNCERTAINTY)
    with open(os.path.join(sum_run["work"], "pseudo_targets_0.json")) as handle:
        targets = json.load(handle)["images"]
    assert len(maps) == sum(len(entry["masks"]) for entry in targets) > 0  # one per pseudo-target (none passed through)
    assert maps.header["refiner"] == REFINER and not os.path.exists(sum_run["maps"] + ".parts")
    assert any((maps.levels(int(key)).values > 0).any() for key in maps.keys())  # the random SAM disagrees somewhere
    with open(os.path.join(sum_run["work"], "log.jsonl")) as handle:
        rows = [json.loads(line) for line in handle]
    assert any(0.0 < row.get("certainty", 0.0) < 1.0 for row in rows)  # pseudo-targets trained with their maps
    stamp = os.path.getmtime(sum_run["maps"])
    train_refiner(TrainingData(unlabeled=[unlabeled], coco=[shapes_data]), sum_run["out"], sum_run["config"],
                  model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    assert os.path.getmtime(sum_run["maps"]) == stamp  # a second run does not compute them again


class CrashingRefiner:
    """The real refiner, stopped (as by a crash) after ``allowed`` images; counts the images it refines."""

    def __init__(self, refiner, allowed=None):
        self.refiner, self.allowed, self.calls = refiner, allowed, 0

    def refine(self, image, masks, **kwargs):
        if self.allowed is not None and self.calls >= self.allowed:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.refiner.refine(image, masks, **kwargs)


def test_a_crashed_computation_resumes_with_the_missing_parts_only(sum_run, unlabeled, tiny_sam_file, tmp_path):
    refiner = SAMRefiner(SamEngine(build_sam_model("tiny", tiny_sam_file)), iterations=2)
    targets = os.path.join(sum_run["work"], "pseudo_targets_0.json")
    whole = str(tmp_path / "whole.bin")
    compute_target_uncertainty(lambda: refiner, unlabeled, targets, whole, meta={"refiner": REFINER}, part_images=1)
    resumed = str(tmp_path / "resumed.bin")
    first = CrashingRefiner(refiner, allowed=2)
    with pytest.raises(KeyboardInterrupt):
        compute_target_uncertainty(lambda: first, unlabeled, targets, resumed, meta={"refiner": REFINER}, part_images=1)
    assert not os.path.exists(resumed) and len(os.listdir(resumed + ".parts")) == 2
    second = CrashingRefiner(refiner)
    compute_target_uncertainty(lambda: second, unlabeled, targets, resumed, meta={"refiner": REFINER}, part_images=1)
    assert second.calls == 2  # the 2 images the crash left, not all 4
    with open(whole, "rb") as a, open(resumed, "rb") as b:
        assert a.read() == b.read()
    assert open(sum_run["maps"], "rb").read() == open(whole, "rb").read()  # what the trainer computed


def test_certainty_reaching_the_loss_is_the_flipped_map_on_the_low_res_frame(sum_run, unlabeled, tiny_sam_file, tmp_path,
                                                                              monkeypatch):
    torch.set_num_threads(1)
    source = unlabeled_source(sum_run, unlabeled)
    config = quick_config(noise="morphological", hflip=1.0, colour_jitter=0.0, target_uncertainty=dict(REFINER))
    trainer = RefinerTrainer(build_sam_model("tiny", tiny_sam_file), [source], config, work_dir=str(tmp_path / "w"), workers=0)
    samples = trainer.loader.batch(0)
    assert all(sample.flipped and sample.uncertainty is not None for sample in samples)
    counts = collections.defaultdict(float)
    prepared = trainer.step_fn.make_noise(trainer.step_fn.prepare(samples, counts), counts)
    assert prepared
    engine = trainer.engine
    for item in prepared:
        sample = item.sample
        height, width = sample.target.shape
        index = next(t for t in range(source.target_count(sample.ref.image))
                     if np.array_equal(source.load_target(sample.ref.image, t, height, width)[:, ::-1], sample.target))
        levels = source.uncertainty.levels(source.first_keys[sample.ref.image] + index)
        u = torch.from_numpy(np.ascontiguousarray(levels.full(height, width, np.float32)[:, ::-1] / 255.0))
        resized = F.interpolate(u[None, None], size=item.embedding.input_size, mode="bilinear", align_corners=False)
        padded = F.pad(resized, (0, engine.image_size - resized.shape[-1], 0, engine.image_size - resized.shape[-2]))
        direct = 1.0 - F.interpolate(padded, size=engine.mask_input_size, mode="bilinear", align_corners=False)[0, 0]
        assert float(direct[item.valid].min()) < 0.9  # a map with something in it
        torch.testing.assert_close(item.certainty[item.valid], direct[item.valid], atol=1e-5, rtol=0)
    seen = []

    def recording_focal_loss(logits, targets, valid, certainty=None, **kwargs):
        seen.append(certainty)
        return focal_loss(logits, targets, valid, certainty, **kwargs)

    focal_loss = step_module.focal_loss
    monkeypatch.setattr(step_module, "focal_loss", recording_focal_loss)
    rngs = {id(item): item.sample.seeds.numpy(2) for item in prepared}
    generators = {id(item): item.sample.seeds.torch(2) for item in prepared}
    trainer.step_fn._forward(prepared, 0, rngs, generators, counts)
    assert torch.equal(seen[0], torch.stack([item.certainty for item in prepared]))


# ----------------------------------------------------------------------------- the losses
def test_certainty_one_everywhere_changes_no_loss_and_no_gradient(shapes_data, tiny_sam_file, tmp_path):
    torch.set_num_threads(1)
    trainer = coco_trainer(shapes_data, tiny_sam_file, tmp_path)
    samples = trainer.loader.batch(1)
    plain, plain_grads = loss_and_gradients(trainer, samples)
    for sample in samples:
        sample.uncertainty = WindowedMap(np.zeros(sample.target.shape, np.uint8), 0, 0)  # u = 0: c = 1
    certain, certain_grads = loss_and_gradients(trainer, samples)
    assert certain.sums["ua_pairs"] > 0
    assert torch.equal(plain.loss, certain.loss)
    assert all(plain.sums[name] == certain.sums[name] for name in LOSS_TERMS)
    assert len(plain_grads) == len(certain_grads) and all(torch.equal(a, b) for a, b in zip(plain_grads, certain_grads))
    for sample in samples:  # ... while a certainty below 1 does change the loss
        sample.uncertainty = WindowedMap(np.full(sample.target.shape, 100, np.uint8), 0, 0)
    assert float(trainer.step_fn(samples, 2).loss.detach()) != float(plain.loss.detach())


def forward(trainer, items):
    counts = collections.defaultdict(float)
    trainer.optimizer.zero_grad(set_to_none=True)
    rngs = {id(item): item.sample.seeds.numpy(2) for item in items}
    generators = {id(item): item.sample.seeds.torch(2) for item in items}
    losses, _ = trainer.step_fn._forward(items, 0, rngs, generators, counts)
    losses.sum().backward()
    return losses.detach(), dict(counts), [p.grad.clone() for p in trainer.parameters if p.grad is not None]


def test_labels_of_pixels_with_zero_certainty_change_no_loss_term_and_no_gradient(shapes_data, tiny_sam_file, tmp_path):
    """Every loss term of the step (focal, Dice, IoU head, CMRL) and every gradient, with the targets of the
    c = 0 half of the frame inverted or not."""
    torch.set_num_threads(1)
    trainer = coco_trainer(shapes_data, tiny_sam_file, tmp_path)
    counts = collections.defaultdict(float)
    items = trainer.step_fn.make_noise(trainer.step_fn.prepare(trainer.loader.batch(0), counts), counts)
    size = items[0].target_low.shape[-1]
    for item in items:
        item.certainty = torch.ones(item.target_low.shape)
        item.certainty[:, : size // 3] = 0.0
    original = [item.target_low.clone() for item in items]
    losses, sums, grads = forward(trainer, items)
    for item in items:
        item.target_low = item.target_low.clone()
        item.target_low[:, : size // 3] = ~item.target_low[:, : size // 3]
    flipped_losses, flipped_sums, flipped_grads = forward(trainer, items)
    assert torch.equal(losses, flipped_losses)
    assert all(sums[name] == flipped_sums[name] for name in LOSS_TERMS)
    assert all(torch.equal(a, b) for a, b in zip(grads, flipped_grads))
    # the same inversion where c = 1 changes the loss (the check above can fail)
    for item, target in zip(items, original):
        item.target_low, item.certainty = target, None
    plain_losses, _, _ = forward(trainer, items)
    for item in items:
        item.target_low = item.target_low.clone()
        item.target_low[:, : size // 3] = ~item.target_low[:, : size // 3]
    assert not torch.equal(plain_losses, forward(trainer, items)[0])


# ----------------------------------------------------------------------------- UA prompt sampling
def test_sam_noise_points_follow_the_certainty(tiny_sam_file):
    engine = SamEngine(build_sam_model("tiny", tiny_sam_file))
    image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    embedding = engine.encode([image])[0]
    target = np.zeros((40, 50), bool)
    target[10:12, 20:22] = True
    certainty = np.ones((40, 50), np.float32)  # outside the target: never drawn whatever its certainty
    certainty[10:12, 20:22] = [[0.0, 0.2], [0.3, 0.5]]
    accept = SamNoiseConfig(min_iou_with_target=0.0, min_predicted_iou=-1e9, min_stability=0.0, tries=1)
    draws = 1500
    points = collections.Counter(sam_pseudo_label(engine, embedding, target, np.random.default_rng(seed), accept,
                                                  certainty=certainty).point for seed in range(draws))
    assert set(points) <= {(21, 10), (20, 11), (21, 11)}  # never the c = 0 pixel (20, 10), never outside
    for point, probability in (((21, 10), 0.2), ((20, 11), 0.3), ((21, 11), 0.5)):
        spread = 5 * np.sqrt(draws * probability * (1 - probability))
        assert abs(points[point] - draws * probability) < spread, (point, points)
    # certainty 0 on the whole target: uniform over it (SUM says nothing; a prompt is still drawn)
    zero = np.zeros((40, 50), np.float32)
    drawn = {sam_pseudo_label(engine, embedding, target, np.random.default_rng(seed), accept, certainty=zero).point
             for seed in range(60)}
    assert drawn == {(20, 10), (21, 10), (20, 11), (21, 11)}


def test_sam_noise_of_a_pseudo_target_draws_its_point_where_the_map_is_certain(sum_run, unlabeled, tiny_sam_file, tmp_path,
                                                                               monkeypatch):
    torch.set_num_threads(1)
    source = unlabeled_source(sum_run, unlabeled)
    accept = SamNoiseConfig(min_iou_with_target=0.0, min_predicted_iou=-1e9, min_stability=0.0)
    config = quick_config(noise="sam", sam_noise=accept, hflip=0.5, target_uncertainty=dict(REFINER))
    trainer = RefinerTrainer(build_sam_model("tiny", tiny_sam_file), [source], config, work_dir=str(tmp_path / "w"), workers=0)
    samples = trainer.loader.batch(0)
    for sample in samples:  # certain only in the target's first pixel (row-major)
        ys, xs = np.nonzero(sample.target)
        levels = np.full(sample.target.shape, 255, np.uint8)
        levels[ys[0], xs[0]] = 0
        sample.uncertainty = WindowedMap(levels, 0, 0)
    drawn = []

    def recording(engine, embedding, target, rng, noise_config, certainty=None):
        label = sam_pseudo_label(engine, embedding, target, rng, noise_config, certainty=certainty)
        drawn.append((target, label.point))
        return label

    monkeypatch.setattr(step_module, "sam_pseudo_label", recording)
    counts = collections.defaultdict(float)
    trainer.step_fn.make_noise(trainer.step_fn.prepare(samples, counts), counts)
    assert drawn
    for target, (x, y) in drawn:
        ys, xs = np.nonzero(target)
        assert (x, y) == (xs[0], ys[0])  # the one pixel with c > 0


# ----------------------------------------------------------------------------- the task prompt
def test_a_zero_task_embedding_changes_nothing(shapes_data, tiny_sam_file, tmp_path):
    torch.set_num_threads(1)
    without = coco_trainer(shapes_data, tiny_sam_file, tmp_path / "a", task_prompt=False)
    with_prompt = coco_trainer(shapes_data, tiny_sam_file, tmp_path / "b", task_prompt=True)
    assert without.task_prompt is None and with_prompt.task_prompt is not None
    samples = without.loader.batch(0)
    plain, plain_grads = loss_and_gradients(without, samples)
    prompted, prompted_grads = loss_and_gradients(with_prompt, samples)
    assert torch.equal(plain.loss, prompted.loss)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, prompted_grads))  # the decoder's gradients ...
    task_grad = with_prompt.task_prompt.embedding.weight.grad
    assert task_grad[ENTITY].abs().sum() > 0 and not task_grad[[PSEUDO, SALIENT_OBJECT]].any()  # ... and the task's


def test_task_prompt_trains_on_mixed_tasks_and_is_saved(sum_run, tiny_sam_file):
    state = read_refiner_checkpoint(sum_run["out"])
    prompt = state["task_prompt"]
    assert prompt["tasks"] == list(TASKS) and prompt["default"] == "entity"
    assert prompt["embedding"].shape == (3, build_tiny_sam().prompt_encoder.embed_dim)
    rows = prompt["embedding"].abs().sum(dim=1)
    assert rows[PSEUDO] > 0 and rows[ENTITY] > 0 and rows[SALIENT_OBJECT] == 0  # trained where there were samples
    assert any("task prompt on" in note for note in sum_run["notes"])


def test_task_prompt_is_off_for_one_task_and_on_for_pairs_with_coco(refiner_file, shapes_data, tiny_sam_file, tmp_path):
    assert "task_prompt" not in read_refiner_checkpoint(refiner_file)  # COCO only: one task
    pairs = make_shapes_pairs(str(tmp_path / "pairs"), num_images=2, size=(64, 64), seed=3)
    sources = [CocoSource(*shapes_data), FolderPairSource(*pairs)]
    assert [source.task for source in sources] == [ENTITY, SALIENT_OBJECT]
    assert FolderPairSource(*pairs, task=ENTITY).task == ENTITY  # a source's task can be overridden
    out = str(tmp_path / "mixed.pth")
    train_refiner(TrainingData(coco=[shapes_data], pairs=[pairs]), out, quick_config(iterations=1, noise="morphological"),
                  model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    assert read_refiner_checkpoint(out)["task_prompt"]["default"] == "entity"  # more entity targets than salient ones
    off = str(tmp_path / "off.pth")
    train_refiner(TrainingData(coco=[shapes_data], pairs=[pairs]), off,
                  quick_config(iterations=1, noise="morphological", task_prompt=False), model_type="tiny",
                  checkpoint=tiny_sam_file, **SILENT)
    assert "task_prompt" not in read_refiner_checkpoint(off)


@pytest.fixture(scope="module")
def strong_task_checkpoint(sum_run, tmp_path_factory):
    """The mixed run's checkpoint with a large task embedding (3 steps of training move it very little)."""
    state = read_refiner_checkpoint(sum_run["out"])
    state["task_prompt"]["embedding"] = torch.randn(state["task_prompt"]["embedding"].shape,
                                                    generator=torch.Generator().manual_seed(0)) * 2.0
    path = str(tmp_path_factory.mktemp("strong") / "strong.pth")
    torch.save(state, path)
    return path


def test_phoenix_adds_the_task_embedding_to_the_image_embedding(strong_task_checkpoint, tiny_sam_file):
    rng = np.random.default_rng(1)
    image = (rng.random((60, 70, 3)) * 255).astype(np.uint8)
    masks = np.zeros((2, 60, 70), bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 35:55, 30:65] = True

    def phoenix(**kwargs):
        return build_refiner(dict(type="Phoenix", model_type="tiny", checkpoint=tiny_sam_file,
                                  refiner_checkpoint=strong_task_checkpoint, iterations=3, **kwargs))

    entity = phoenix(task="entity")
    assert entity.task == "entity" and entity.config["task"] == "entity"
    result = entity.refine(image, masks, probabilities=True)
    plain = phoenix(task="none")
    assert plain.task is None and "task" not in plain.config
    embedding = plain.engine.encode([image])[0]
    vector = read_refiner_checkpoint(strong_task_checkpoint)["task_prompt"]["embedding"][ENTITY]
    embedding.features = embedding.features + vector.reshape(1, -1, 1, 1)
    manual = plain.refine_with_embedding(embedding, masks, 0.0, probabilities=True)
    np.testing.assert_array_equal(result.masks, manual.masks)
    for ours, theirs in zip(result.probabilities, manual.probabilities):
        np.testing.assert_array_equal(ours.values, theirs.values)
    without = plain.refine(image, masks, probabilities=True)
    assert any(not np.array_equal(a.values, b.values) for a, b in zip(result.probabilities, without.probabilities))
    # the default is the checkpoint's ("entity"); ids work as names do
    np.testing.assert_array_equal(phoenix().refine(image, masks).masks, result.masks)
    assert phoenix(task=2).task == phoenix(task="2").task == "entity"
    with pytest.raises(ValueError, match="unknown task 'part'"):
        phoenix(task="part")


def test_a_task_for_a_checkpoint_without_task_prompt_is_refused(refiner_file, tiny_sam_file, shapes_data, tmp_path):
    build = dict(type="Phoenix", model_type="tiny", checkpoint=tiny_sam_file, refiner_checkpoint=refiner_file)
    assert build_refiner(build).task is None  # default: none to add
    with pytest.raises(ValueError, match=f"{refiner_file}.*without a task prompt"):
        build_refiner(dict(build, task="entity"))
    annotations, root = shapes_data
    with pytest.raises(ValueError, match="without a task prompt"):  # the job refuses before any work
        refine_annotation_file(annotations, root, str(tmp_path / "out.json"),
                               JobOptions(refiner="phoenix", model_type="tiny", checkpoint=tiny_sam_file,
                                          refiner_kwargs={"refiner_checkpoint": refiner_file, "task": "entity"},
                                          progress=False, workers=0))
    assert not os.path.exists(tmp_path / "out.json") and not os.path.exists(tmp_path / "out.json.work")


# ----------------------------------------------------------------------------- bad settings
def test_target_uncertainty_needs_unlabeled_data_and_a_known_refiner(shapes_data, tiny_sam_file, tmp_path):
    with pytest.raises(ValueError, match="--unlabeled"):
        train_refiner(TrainingData(coco=[shapes_data]), str(tmp_path / "a.pth"),
                      quick_config(target_uncertainty=dict(REFINER)), model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    with pytest.raises(ValueError, match="NoSuchRefiner"):
        quick_config(target_uncertainty={"type": "NoSuchRefiner"}).validate()
    with pytest.raises(ValueError, match="no_such_option"):
        quick_config(target_uncertainty={"type": "SAMRefiner", "no_such_option": 1}).validate()
    assert not os.listdir(tmp_path)
    config_file = tmp_path / "refiner.json"
    config_file.write_text(json.dumps({"type": "Phoenix", "refiner_checkpoint": "x.pth"}))
    assert load_refiner_config(str(config_file)) == {"type": "Phoenix", "refiner_checkpoint": os.path.abspath("x.pth")}
    assert load_refiner_config('{"type": "SAMRefiner"}') == {"type": "SAMRefiner"}
    for bad in (str(tmp_path / "absent.json"), '{"type": ', "[1, 2]"):
        with pytest.raises(ValueError, match="--target-uncertainty"):
            load_refiner_config(bad)


def test_tool_trains_with_target_uncertainty_and_task_prompt(unlabeled, shapes_data, tiny_sam_file, tmp_path):
    out = str(tmp_path / "tool.pth")
    refiner = tmp_path / "refiner.json"
    refiner.write_text(json.dumps({"type": "SAMRefiner", "iterations": 1}))
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_refiner.py"), "--unlabeled", unlabeled,
                          "--coco", *shapes_data, "--model-type", "tiny", "--checkpoint", tiny_sam_file, "--out", out,
                          "--iterations", "1", "--batch-size", "2", "--warmup", "1", "--cascade-steps", "0",
                          "--workers", "0", "--no-progress", "--noise", "morphological", "--filter-predicted-iou=-1e9",
                          "--filter-stability", "0", "--target-uncertainty", str(refiner)],
                         env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    state = read_refiner_checkpoint(out)
    assert state["training"]["target_uncertainty"] == {"type": "SAMRefiner", "iterations": 1}
    assert state["task_prompt"]["default"] == "entity" and "task prompt on" in run.stdout
    assert os.path.isfile(os.path.join(out + ".work", certainty_file_name(0, {"type": "SAMRefiner", "iterations": 1})))
