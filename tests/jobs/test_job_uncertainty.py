"""``--uncertainty``: the sidecar of the pseudo-label job, against a direct computation, across kills,
shards and ranks; and the job without it, byte for byte as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from refine_hooks.data.images import load_image
from refine_hooks.data.masks import segmentation_to_mask
from refine_hooks.data.windows import WindowedMap, mask_box, union_box
from refine_hooks.jobs import JobInputError, JobOptions, WorkDirMismatchError, refine_annotation_file, work_dir_for
from refine_hooks.jobs.worker import INFO_KEY
from refine_hooks.refiners import build_refiner
from refine_hooks.uncertainty import (KIND_COARSE_PROBABILITY, MapEntry, MapFile, certainty_summary, quantize,
                                      uncertainty_map, uncertainty_path, write_map_file)

from pseudo_label_data import make_coco_dataset
from test_job_processes import TOOL, TORCHRUN, _args, _bytes, _env, _run, kill_after_first_chunk

HERE = os.path.dirname(os.path.abspath(__file__))
ITERATIONS = 2


def _options(checkpoint, **overrides):
    base = dict(model_type="tiny", checkpoint=checkpoint, device="cpu", workers=0, chunk_size=2, progress=False,
                refiner_kwargs={"iterations": ITERATIONS}, uncertainty=True)
    base.update(overrides)
    return JobOptions(**base)


def _read(path):
    with open(path) as handle:
        return json.load(handle)


def _direct_maps(coco, image_dir, checkpoint, coarse_probabilities=None):
    """annotation id -> (uint8 levels on their window, coarse, refined) from the refiner called directly on
    each image's refinable masks, and u = |σ(s) − σ(r)| computed from its probabilities."""
    refiner = build_refiner(dict(type="SAMRefiner", model_type="tiny", checkpoint=checkpoint, iterations=ITERATIONS))
    out = {}
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        if not anns:
            continue
        coarse = np.stack([segmentation_to_mask(a["segmentation"], image["height"], image["width"]) for a in anns])
        result = refiner.refine(load_image(os.path.join(image_dir, image["file_name"])), coarse, probabilities=True)
        for slot, ann in enumerate(anns):
            if slot in result.passed_through:
                continue
            detector = coarse_probabilities.get(ann["id"]) if coarse_probabilities else None
            u = uncertainty_map(coarse[slot], result.masks[slot], result.probabilities[slot], detector)
            out[ann["id"]] = (WindowedMap(quantize(u.values), u.x0, u.y0), coarse[slot], result.masks[slot])
    return out


def test_sidecar_holds_the_directly_computed_maps_and_summaries(coco_dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "refined.json")
    summary = refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint))
    plain_out = str(tmp_path / "plain.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], plain_out, _options(tiny_checkpoint, uncertainty=False))
    result, plain = _read(out), _read(plain_out)

    sidecar = uncertainty_path(out)
    assert summary.uncertainty_file == os.path.abspath(sidecar) and sidecar.endswith("refined.uncertainty.bin")
    maps = MapFile(sidecar)
    assert maps.kind == "uncertainty" and maps.key_kind == "id"
    assert maps.header["uncertainty"] == {"coarse": {"source": "binary_signed_distance", "width": 0.5}, "theta": 0.6}
    direct = _direct_maps(coco_dataset["data"], coco_dataset["images"], tiny_checkpoint)
    refined_ids = [a["id"] for a in result["annotations"] if a[INFO_KEY]["status"] == "refined"]
    assert sorted(maps.keys().tolist()) == sorted(refined_ids) == sorted(direct) and len(refined_ids) >= 10
    for annotation, before in zip(result["annotations"], plain["annotations"]):
        info = dict(annotation[INFO_KEY])
        if annotation["id"] in direct:
            levels, coarse, refined = direct[annotation["id"]]
            got = maps.levels(annotation["id"])
            assert got.box == levels.box == union_box(mask_box(coarse), mask_box(refined))
            np.testing.assert_array_equal(got.values, levels.values)
            assert maps.image_size(annotation["id"]) == coarse.shape
            assert {k: info.pop(k) for k in ("mean_certainty", "certain_fraction")} == certainty_summary(levels, coarse, refined)
        else:
            assert "mean_certainty" not in info
        # --uncertainty adds the two summary numbers and changes nothing else
        assert {**annotation, INFO_KEY: info} == before
    assert 0 < summary.mean_certainty < 1 and summary.mean_certain_fraction is not None


def test_job_without_uncertainty_writes_the_bytes_it_wrote_before(tmp_path):
    """``data/plain_job_reference.json`` is the output of refine-hooks 353a649 (before uncertainty maps
    existed) for this command on this generated data; the same command must still write it byte for byte.
    (CPU results depend on the thread count, hence OMP_NUM_THREADS=1; to regenerate, check out that commit
    and run the same command.)"""
    from refine_hooks.sam import save_tiny_checkpoint

    make_coco_dataset(str(tmp_path), num_images=4, seed=0)
    checkpoint = str(save_tiny_checkpoint(str(tmp_path / "tiny.pth"), seed=0))
    out = str(tmp_path / "out.json")
    command = [sys.executable, TOOL, str(tmp_path / "pseudo.json"), "--images", str(tmp_path / "images"), "--out", out,
               "--model-type", "tiny", "--checkpoint", checkpoint, "--device", "cpu", "--workers", "0",
               "--chunk-size", "2", "--iterations", "2", "--no-progress"]
    completed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert _bytes(out) == _bytes(os.path.join(HERE, "data", "plain_job_reference.json"))
    assert not os.path.exists(uncertainty_path(out))


@pytest.fixture()
def dataset(tmp_path):
    make_coco_dataset(str(tmp_path), num_images=10, seed=3)
    return {"images": str(tmp_path / "images"), "ann": str(tmp_path / "pseudo.json")}


def test_killed_uncertainty_run_resumes_to_the_same_sidecar(dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "killed.json")
    work = work_dir_for(out)
    argv = _args(dataset, tiny_checkpoint, out, "--iterations", "8", "--uncertainty")
    done = kill_after_first_chunk(argv, out)
    assert not os.path.exists(out) and 1 <= len(done) < 9
    assert all(os.path.exists(os.path.join(work, n.replace("chunk-", "maps-").replace(".json", ".bin"))) for n in done)

    # resuming without --uncertainty is refused (the chunks have maps the option decides about) ...
    refused = subprocess.run([sys.executable, TOOL, *_args(dataset, tiny_checkpoint, out, "--iterations", "8")],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 3 and "uncertainty" in refused.stderr
    # ... the same command finishes it: the files an uninterrupted run writes
    _run(argv)
    uninterrupted = str(tmp_path / "uninterrupted.json")
    _run(_args(dataset, tiny_checkpoint, uninterrupted, "--iterations", "8", "--uncertainty"))
    assert _bytes(out) == _bytes(uninterrupted)
    assert _bytes(uncertainty_path(out)) == _bytes(uncertainty_path(uninterrupted))
    assert len(MapFile(uncertainty_path(out))) > 10


def test_shards_and_ranks_carry_the_maps(dataset, tiny_checkpoint, tmp_path):
    single = str(tmp_path / "single.json")
    _run(_args(dataset, tiny_checkpoint, single, "--uncertainty"))
    ranked = str(tmp_path / "ranked.json")
    _run(_args(dataset, tiny_checkpoint, ranked, "--uncertainty"), launcher=(TORCHRUN, "--standalone", "--nproc_per_node=2"))
    sharded = str(tmp_path / "sharded.json")
    _run(_args(dataset, tiny_checkpoint, sharded, "--uncertainty", "--shard", "1/2"))
    assert not os.path.exists(uncertainty_path(sharded))
    _run(_args(dataset, tiny_checkpoint, sharded, "--uncertainty", "--shard", "0/2"))
    for other in (ranked, sharded):
        assert _bytes(other) == _bytes(single)
        assert _bytes(uncertainty_path(other)) == _bytes(uncertainty_path(single))


def _write_probabilities(coco, path, rng, skip=(), size=None):
    """A detector-style probability map file for the records of ``coco``: random probabilities on each
    mask's box grown by 3 pixels. Returns id -> WindowedMap of the levels."""
    images = {i["id"]: i for i in coco["images"]}
    entries, truth = [], {}
    for ann in coco["annotations"]:
        if ann["id"] in skip:
            continue
        image = images[ann["image_id"]]
        height, width = image["height"], image["width"]
        x1, y1, x2, y2 = mask_box(segmentation_to_mask(ann["segmentation"], height, width))
        x1, y1, x2, y2 = max(0, x1 - 3), max(0, y1 - 3), min(width - 1, x2 + 3), min(height - 1, y2 + 3)
        levels = WindowedMap(quantize(rng.random((y2 - y1 + 1, x2 - x1 + 1))), x1, y1)
        truth[ann["id"]] = levels
        entries.append(MapEntry.from_levels(ann["id"], *(size or (height, width)), levels))
    write_map_file(path, entries, kind=KIND_COARSE_PROBABILITY)
    return truth


def test_detector_probabilities_stand_for_the_coarse_side(coco_dataset, tiny_checkpoint, tmp_path):
    coco = coco_dataset["data"]
    probabilities = str(tmp_path / "pseudo.probabilities.bin")
    truth = _write_probabilities(coco, probabilities, np.random.default_rng(0))
    out = str(tmp_path / "refined.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out,
                           _options(tiny_checkpoint, coarse_probabilities=probabilities))
    maps = MapFile(uncertainty_path(out))
    assert maps.header["uncertainty"]["coarse"]["source"] == "detector_probabilities"
    direct = _direct_maps(coco, coco_dataset["images"], tiny_checkpoint, truth)
    assert sorted(maps.keys().tolist()) == sorted(direct)
    for key, (levels, _, _) in direct.items():
        np.testing.assert_array_equal(maps.levels(key).values, levels.values)


def test_bad_coarse_probabilities_stop_before_any_work(coco_dataset, tiny_checkpoint, tmp_path):
    coco = coco_dataset["data"]
    out = str(tmp_path / "refined.json")
    missing = str(tmp_path / "missing.bin")
    _write_probabilities(coco, missing, np.random.default_rng(0), skip={2})
    with pytest.raises(JobInputError, match=r"annotation id 2 \(record #1\) of image .*: no map"):
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, coarse_probabilities=missing))
    resized = str(tmp_path / "resized.bin")
    _write_probabilities(coco, resized, np.random.default_rng(0), size=(200, 300))
    with pytest.raises(JobInputError, match=r"map for a 200x300 image, the image is 64x80"):
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, coarse_probabilities=resized))
    with pytest.raises(JobInputError, match="nothing.bin: no such map file"):
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out,
                               _options(tiny_checkpoint, coarse_probabilities=str(tmp_path / "nothing.bin")))
    with pytest.raises(ValueError, match="only used with --uncertainty"):
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out,
                               _options(tiny_checkpoint, coarse_probabilities=missing, uncertainty=False))
    assert not os.path.exists(work_dir_for(out)) or not any(n.startswith("chunk-") for n in os.listdir(work_dir_for(out)))


def test_switching_uncertainty_on_a_half_done_job_is_refused(coco_dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "refined.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, uncertainty=False, shard=(0, 2)))
    with pytest.raises(WorkDirMismatchError, match="options.uncertainty"):
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, shard=(1, 2)))
