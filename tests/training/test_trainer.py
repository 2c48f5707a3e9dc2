"""The refiner trainer: it learns, resumes after kill -9 to the same weights, splits over ranks, caches
embeddings without changing results, and stops on bad data naming the file."""

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from training_helpers import REPO, quick_config
from refine_hooks.sam import build_sam_model
from refine_hooks.sam.refiner_weights import read_refiner_checkpoint
from refine_hooks.training.phoenix import (CocoSource, RefinerTrainer, SelfSupervisedConfig, TrainingData,
                                           TrainingDataError, TrainingResumeError, train_refiner)
from refine_hooks.training.phoenix.config import SamNoiseConfig
from refine_hooks.training.phoenix.data import SampleSeeds
from refine_hooks.training.phoenix.embeddings import EmbeddingCache, image_key
from refine_hooks.training.phoenix.noise import blob_noise, morphological_noise
from refine_hooks.training.phoenix.trainer import amp_start_warning

TOOL = os.path.join(REPO, "tools", "train_refiner.py")
SILENT = dict(progress=False, log=lambda message: None, workers=0)


def tool_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=REPO)
    return env


def tool_args(shapes_data, tiny_sam_file, out, *extra):
    annotations, root = shapes_data
    return [sys.executable, TOOL, "--coco", annotations, root, "--model-type", "tiny", "--checkpoint", tiny_sam_file,
            "--out", out, "--batch-size", "2", "--warmup", "1", "--cascade-steps", "1", "--workers", "0",
            "--no-progress", *extra]


def tensorboard_scalars(directory, tag):
    """``[(step, value)]`` of one scalar of the event files in ``directory``, as TensorBoard reads them
    (restarts with ``purge_step`` drop the orphaned later steps of earlier files)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(directory)
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def weights(path):
    return read_refiner_checkpoint(path)["weights"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_training_lowers_the_loss_on_the_samples_it_trains_on(shapes_data, tiny_sam_file, tmp_path):
    """Step losses on a fixed batch (same seeds, so the same noisy masks) before and after 25 steps on it."""
    torch.set_num_threads(1)
    config = quick_config(iterations=25, batch_size=2, lr=1e-3, noise="morphological", prompt_dropout=0.0, hflip=0.0,
                          colour_jitter=0.0)
    source = CocoSource(*shapes_data)
    source.check(False)
    source.images, source.entries, source.annotations = source.images[:1], source.entries[:1], source.annotations[:1]
    sam = build_sam_model("tiny", tiny_sam_file)
    trainer = RefinerTrainer(sam, [source], config, work_dir=str(tmp_path / "work"), workers=0)
    fixed = trainer.loader.batch(0)

    def fixed_loss():
        with torch.no_grad():
            return float(trainer.step_fn(fixed, 2).loss)

    before = fixed_loss()
    trainer.train()
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)


def test_kill_9_then_rerun_equals_an_uninterrupted_run(shapes_data, tiny_sam_file, tmp_path):
    env = tool_env()
    reference = str(tmp_path / "reference.pth")
    subprocess.run(tool_args(shapes_data, tiny_sam_file, reference, "--iterations", "6"), env=env, check=True,
                   capture_output=True)
    out = str(tmp_path / "resumed.pth")
    checkpoint = out + ".work/last.pth"
    process = subprocess.Popen(tool_args(shapes_data, tiny_sam_file, out, "--iterations", "6", "--checkpoint-every", "2"),
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not os.path.exists(checkpoint) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = torch.load(checkpoint, weights_only=False)
    assert 2 <= state["iteration"] < 6 and not os.path.exists(out)
    rerun = subprocess.run(tool_args(shapes_data, tiny_sam_file, out, "--iterations", "6", "--checkpoint-every", "2"),
                           env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert_same_weights(out, reference)
    with open(out + ".work/log.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4, 5, 6]
    # TensorBoard: the killed run's events past its checkpoint are purged, so each step reads once, as logged
    losses = tensorboard_scalars(out + ".work/tensorboard", "loss")
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert [value for _, value in losses] == pytest.approx([row["loss"] for row in rows], rel=1e-6)
    # A finished run only rewrites the output; other settings in the same work dir are refused.
    again = subprocess.run(tool_args(shapes_data, tiny_sam_file, out, "--iterations", "6", "--lr", "0.1"),
                           env=env, capture_output=True, text=True)
    assert again.returncode == 3 and "config.lr" in again.stderr and "Traceback" not in again.stderr


def test_two_ranks_with_torchrun_equal_one_process(shapes_data, tiny_sam_file, tmp_path):
    env = tool_env()
    single = str(tmp_path / "single.pth")
    subprocess.run(tool_args(shapes_data, tiny_sam_file, single, "--iterations", "3"), env=env, check=True,
                   capture_output=True)
    double = str(tmp_path / "double.pth")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run(torchrun + tool_args(shapes_data, tiny_sam_file, double, "--iterations", "3")[1:], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    initial = build_sam_model("tiny", tiny_sam_file).state_dict()
    a, b = weights(single), weights(double)
    moved = max(float((a[k] - initial[k]).abs().max()) for k in a)
    assert moved > 1e-5  # training changed the weights ...
    for key in a:  # ... and both runs changed them alike, up to the order of floating-point sums
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_embedding_cache_changes_nothing_but_speed(shapes_data, tiny_sam_file, tmp_path):
    torch.set_num_threads(1)
    data = TrainingData(coco=[shapes_data])
    config = quick_config(colour_jitter=0.0)
    plain = str(tmp_path / "plain.pth")
    train_refiner(data, plain, config, model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    cached = str(tmp_path / "cached.pth")
    cache = str(tmp_path / "cache")
    train_refiner(data, cached, config, model_type="tiny", checkpoint=tiny_sam_file, cache_dir=cache, **SILENT)
    assert_same_weights(plain, cached)
    files = [f for _, _, names in os.walk(cache) for f in names]
    assert files and all(f.endswith(".pt") for f in files)
    warm = str(tmp_path / "warm.pth")
    train_refiner(data, warm, config, model_type="tiny", checkpoint=tiny_sam_file, cache_dir=cache, **SILENT)
    assert_same_weights(plain, warm)
    for run in (plain, cached):
        with open(run + ".work/log.jsonl") as handle:
            losses = [json.loads(line)["loss"] for line in handle]
        assert len(losses) == 3
    with open(plain + ".work/log.jsonl") as a, open(cached + ".work/log.jsonl") as b:
        assert [json.loads(line)["loss"] for line in a] == [json.loads(line)["loss"] for line in b]
    # Colour jitter would change every embedding: with the cache it is off, and the log says so.
    jittered, notes = str(tmp_path / "jittered.pth"), []
    train_refiner(data, jittered, dataclasses.replace(config, colour_jitter=0.4), model_type="tiny", checkpoint=tiny_sam_file,
                  cache_dir=cache, **dict(SILENT, log=notes.append))
    assert any("colour jitter is off" in note for note in notes), notes
    assert_same_weights(plain, jittered)


def test_cache_keys_follow_the_image_and_the_model(tmp_path):
    image = np.zeros((8, 9, 3), np.uint8)
    changed = image.copy()
    changed[0, 0, 0] = 1
    assert image_key(image) != image_key(changed) and image_key(image) == image_key(image.copy())
    assert image_key(image) != image_key(np.ascontiguousarray(image[:, ::-1][:, :8]))
    a, b = EmbeddingCache(str(tmp_path), "a" * 64), EmbeddingCache(str(tmp_path), "b" * 64)
    a.save("k" * 64, torch.ones(1, 2, 3, 3))
    assert a.load("k" * 64).dtype == torch.float16 and b.load("k" * 64) is None
    with open(a.path("k" * 64), "wb") as handle:  # a damaged file is treated as absent
        handle.write(b"junk")
    assert a.load("k" * 64) is None


def test_log_holds_every_term_and_amp_statistics(refiner_file):
    with open(refiner_file + ".work/log.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    assert [row["iteration"] for row in rows] == [1, 2, 3]
    for key in ("loss", "focal", "dice", "iou", "cmrl", "intra", "inter", "self", "lr", "grad_norm", "samples_per_s",
                "amp_updates_per_mask", "amp_hit", "amp_overshot", "amp_missed", "amp_started_below"):
        assert key in rows[0], key
    assert rows[0]["amp_hit"] + rows[0]["amp_overshot"] + rows[0]["amp_missed"] == pytest.approx(1.0)
    assert all(row["amp_started_below"] <= row["amp_overshot"] for row in rows)  # a start below the band overshoots


def test_amp_start_warning_only_when_most_masks_start_below_the_band():
    assert amp_start_warning(64, 32, (0.3, 0.9)) is None and amp_start_warning(0, 0, (0.3, 0.9)) is None
    warning = amp_start_warning(64, 40, (0.3, 0.9))
    assert "62%" in warning and "first 64 noisy masks" in warning and "U(0.3, 0.9)" in warning


def test_a_sam_that_does_not_segment_its_targets_gets_the_amp_warning(shapes_data, tiny_sam_file, tmp_path):
    """A random tiny SAM's masks miss the targets: AMP starts below the band for nearly every mask, once said."""
    notes = []
    train_refiner(TrainingData(coco=[shapes_data]), str(tmp_path / "r.pth"), quick_config(), model_type="tiny",
                  checkpoint=tiny_sam_file, **dict(SILENT, log=notes.append))
    warnings = [note for note in notes if note.startswith("warning: AMP")]
    assert len(warnings) == 1 and "already below the IoU band" in warnings[0], notes
    with open(str(tmp_path / "r.pth") + ".work/log.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    assert np.mean([row["amp_started_below"] for row in rows]) > 0.5


# ----------------------------------------------------------------------------- noise kinds and modes
def test_morphological_and_blob_noise_never_empty_and_change_the_mask():
    yy, xx = np.mgrid[:60, :70]
    mask = ((yy - 30) / 18) ** 2 + ((xx - 35) / 25) ** 2 < 1
    changed = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        for noisy in (morphological_noise(mask, rng), blob_noise(mask, rng)):
            assert noisy.dtype == bool and noisy.shape == mask.shape and noisy.any()
            changed += int(not np.array_equal(noisy, mask))
    assert changed >= 70


def test_sam_noise_feeds_sams_logits_and_counts_rejections(shapes_data, tiny_sam_file, tmp_path):
    torch.set_num_threads(1)
    source = CocoSource(*shapes_data)
    source.check(False)
    sam = build_sam_model("tiny", tiny_sam_file)
    accept_all = SamNoiseConfig(min_iou_with_target=0.0, min_predicted_iou=-1e9, min_stability=0.0)
    trainer = RefinerTrainer(sam, [source], quick_config(noise="sam", sam_noise=accept_all), work_dir=str(tmp_path / "a"),
                             workers=0)
    counts = collections.defaultdict(float)
    prepared = trainer.step_fn.make_noise(trainer.step_fn.prepare(trainer.loader.batch(0), counts), counts)
    assert prepared and all(item.noisy_logits is not None for item in prepared)
    for item in prepared:
        again = trainer.engine.upsample_masks(item.noisy_logits[None], item.embedding)[0]
        np.testing.assert_array_equal(again, item.noisy)
    # SUM's own filters reject a random SAM's masks: counted, no loss from them.
    strict = RefinerTrainer(sam, [source], quick_config(noise="sam"), work_dir=str(tmp_path / "b"), workers=0)
    result = strict.step_fn(strict.loader.batch(0), 2)
    assert result.sums["sam_rejected"] == 2 and result.loss is None


def test_sum_style_checkpoint(shapes_data, tiny_sam_file, tmp_path):
    out = str(tmp_path / "sum.pth")
    accept_all = SamNoiseConfig(min_iou_with_target=0.0, min_predicted_iou=-1e9, min_stability=0.0)
    train_refiner(TrainingData(coco=[shapes_data]), out, quick_config(noise="sam", sam_noise=accept_all), model_type="tiny",
                  checkpoint=tiny_sam_file, **SILENT)
    state = read_refiner_checkpoint(out)
    assert state["kind"] == "sum" and state["training"]["noise"] == "sam"


def test_self_supervised_mode_makes_pseudo_targets_once(tmp_path, tiny_sam_file):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((64, 80, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = str(tmp_path / "selfsup.pth")
    loose = SelfSupervisedConfig(min_predicted_iou=-1e9, min_stability=0.0)
    config = quick_config(self_supervised=loose, noise="morphological")
    train_refiner(TrainingData(unlabeled=[str(folder)]), out, config, model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    targets = out + ".work/pseudo_targets_0.json"
    with open(targets) as handle:
        data = json.load(handle)
    assert [entry["file_name"] for entry in data["images"]] == ["0.png", "1.png", "2.png"]
    assert all(entry["masks"] for entry in data["images"])
    stamp = os.path.getmtime(targets)
    train_refiner(TrainingData(unlabeled=[str(folder)]), out, config, model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    assert os.path.getmtime(targets) == stamp  # reused, not generated again
    # With SAM's own filters a random SAM has no confident mask: nothing to train on, said plainly.
    with pytest.raises(TrainingDataError, match="no usable target"):
        train_refiner(TrainingData(unlabeled=[str(folder)]), str(tmp_path / "strict.pth"), quick_config(),
                      model_type="tiny", checkpoint=tiny_sam_file, **SILENT)


# ----------------------------------------------------------------------------- bad input
def test_bad_data_stops_naming_the_file(tmp_path, shapes_data, tiny_sam_file):
    annotations, root = shapes_data
    with open(annotations) as handle:
        data = json.load(handle)
    only_crowd = dict(data, annotations=[dict(a, iscrowd=1) for a in data["annotations"]])
    crowd_file = tmp_path / "crowd.json"
    crowd_file.write_text(json.dumps(only_crowd))
    with pytest.raises(TrainingDataError, match="no usable target"):
        train_refiner(TrainingData(coco=[(str(crowd_file), root)]), str(tmp_path / "a.pth"), quick_config(),
                      model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    missing = dict(data, images=data["images"] + [dict(data["images"][0], id=999, file_name="shapes/gone.png")],
                   annotations=data["annotations"] + [dict(data["annotations"][0], id=999, image_id=999)])
    missing_file = tmp_path / "missing.json"
    missing_file.write_text(json.dumps(missing))
    with pytest.raises(TrainingDataError, match="gone.png"):
        train_refiner(TrainingData(coco=[(str(missing_file), root)]), str(tmp_path / "b.pth"), quick_config(),
                      model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    notes = []
    train_refiner(TrainingData(coco=[(str(missing_file), root)], skip_missing_images=True), str(tmp_path / "c.pth"),
                  quick_config(iterations=1), model_type="tiny", checkpoint=tiny_sam_file, workers=0, progress=False,
                  log=notes.append)
    assert any("1 unusable images skipped" in note and "gone.png" in note for note in notes)


def test_mask_of_another_size_and_unpaired_files_stop_naming_them(tmp_path, tiny_sam_file):
    images, masks = tmp_path / "im", tmp_path / "gt"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(images / "a.jpg")
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(masks / "a.png")
    with pytest.raises(TrainingDataError, match=r"gt/a.png is 40x48 but its image .*a.jpg is 40x50"):
        train_refiner(TrainingData(pairs=[(str(images), str(masks))]), str(tmp_path / "a.pth"), quick_config(),
                      model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(images / "b.jpg")
    with pytest.raises(TrainingDataError, match="b.jpg"):
        train_refiner(TrainingData(pairs=[(str(images), str(masks))]), str(tmp_path / "b.pth"), quick_config(),
                      model_type="tiny", checkpoint=tiny_sam_file, **SILENT)


def test_an_image_id_naming_two_files_is_refused_and_a_repeated_entry_is_one_image(tmp_path, shapes_data):
    annotations, root = shapes_data
    with open(annotations) as handle:
        data = json.load(handle)
    first, other = data["images"][0], data["images"][1]
    conflicting = tmp_path / "conflicting.json"
    conflicting.write_text(json.dumps(dict(data, images=data["images"] + [dict(other, id=first["id"])])))
    with pytest.raises(TrainingDataError, match=rf"images\[0\] and images\[{len(data['images'])}\] have the same id"):
        CocoSource(str(conflicting), root)
    repeated = tmp_path / "repeated.json"
    repeated.write_text(json.dumps(dict(data, images=data["images"] + [dict(first)])))
    plain, twice = CocoSource(annotations, root), CocoSource(str(repeated), root)
    assert twice.images == plain.images and twice.annotations == plain.annotations  # listed twice, one image


def test_tool_reports_bad_input_in_one_line(tmp_path, tiny_sam_file):
    images = tmp_path / "empty"
    images.mkdir()
    run = subprocess.run([sys.executable, TOOL, "--pairs", str(images), str(images), "--model-type", "tiny",
                          "--checkpoint", tiny_sam_file, "--out", str(tmp_path / "x.pth"), "--no-progress"],
                         env=tool_env(), capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert str(images) in run.stderr


def test_resume_refuses_other_settings(shapes_data, tiny_sam_file, tmp_path):
    data = TrainingData(coco=[shapes_data])
    out = str(tmp_path / "r.pth")
    train_refiner(data, out, quick_config(iterations=1), model_type="tiny", checkpoint=tiny_sam_file, **SILENT)
    with pytest.raises(TrainingResumeError, match="config.cascade_steps"):
        train_refiner(data, out, quick_config(iterations=1, cascade_steps=2), model_type="tiny", checkpoint=tiny_sam_file,
                      **SILENT)


def test_sample_streams_depend_only_on_seed_iteration_and_slot():
    a, b = SampleSeeds(0, 3, 1), SampleSeeds(0, 3, 1)
    assert a.numpy(0).random() == b.numpy(0).random()
    assert a.numpy(0).random() != a.numpy(1).random() != SampleSeeds(0, 3, 2).numpy(0).random()
    assert torch.equal(torch.rand(3, generator=a.torch(2)), torch.rand(3, generator=b.torch(2)))


def test_tool_shows_a_progress_bar_with_loss_terms_and_eta(shapes_data, tiny_sam_file, tmp_path):
    args = [a for a in tool_args(shapes_data, tiny_sam_file, str(tmp_path / "p.pth"), "--iterations", "3") if a != "--no-progress"]
    run = subprocess.run(args, env=tool_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stderr.replace("\r", "\n").splitlines()
    bar = [line for line in lines if line.startswith("training") and "3/3" in line]
    assert bar, run.stderr[-2000:]
    for term in ("loss=", "focal=", "dice=", "iou=", "cmrl=", "amp="):  # the loss terms and AMP's updates per mask
        assert term in bar[-1], bar[-1]
    assert "<" in bar[-1] and ("it/s" in bar[-1] or "s/it" in bar[-1]), bar[-1]  # elapsed<remaining (ETA) and the rate


def lvis_version(annotations_file: str, out: str) -> str:
    """The same scenes as an LVIS v1 file: images named only by ``coco_url``, polygon segmentations, no
    ``iscrowd``, LVIS's per-image category lists."""
    from refine_hooks.data.masks import segmentation_to_mask
    from tiny_coco import mask_polygons

    with open(annotations_file) as handle:
        coco = json.load(handle)
    images = [{"id": image["id"], "height": image["height"], "width": image["width"], "neg_category_ids": [],
               "not_exhaustive_category_ids": [], "coco_url": f"http://images.cocodataset.org/{image['file_name']}"}
              for image in coco["images"]]
    sizes = {image["id"]: (image["height"], image["width"]) for image in images}
    annotations = []
    for annotation in coco["annotations"]:
        polygons = mask_polygons(segmentation_to_mask(annotation["segmentation"], *sizes[annotation["image_id"]]))
        annotations.append({key: annotation[key] for key in ("id", "image_id", "category_id", "bbox", "area")}
                           | {"segmentation": polygons})
    with open(out, "w") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": coco["categories"]}, handle)
    return out


def test_trains_on_an_lvis_format_file(shapes_data, tiny_sam_file, tmp_path):
    """Phoenix's set-up is LVIS v1 train: images found from their ``coco_url`` under the COCO root, polygons."""
    annotations_file, root = shapes_data
    lvis = lvis_version(annotations_file, str(tmp_path / "lvis_v1_train.json"))
    source, reference = CocoSource(lvis, root), CocoSource(annotations_file, root)
    assert source.images == reference.images and all(os.path.isfile(path) for path in source.images)
    assert [len(a) for a in source.annotations] == [len(a) for a in reference.annotations]
    out = str(tmp_path / "lvis.pth")
    run = subprocess.run([sys.executable, TOOL, "--coco", lvis, root, "--model-type", "tiny", "--checkpoint", tiny_sam_file,
                          "--out", out, "--iterations", "2", "--batch-size", "2", "--warmup", "1", "--workers", "0",
                          "--no-progress"], env=tool_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert read_refiner_checkpoint(out)["weights"]
    with open(out + ".work/log.jsonl") as handle:
        assert [json.loads(line)["iteration"] for line in handle] == [1, 2]
