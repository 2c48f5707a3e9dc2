"""The pseudo-label job on a generated COCO dataset with the real tiny SAM."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from refine_hooks.data.images import load_image
from refine_hooks.data.masks import mask_to_xywh, segmentation_to_mask
from refine_hooks.jobs import JobOptions, WorkDirMismatchError, refine_annotation_file, summary_path, work_dir_for
from refine_hooks.jobs.worker import INFO_KEY
from refine_hooks.refiners import build_refiner


# The refiner's defaults (all prompts on): its results are bit-reproducible on CPU and independent of
# how masks are grouped into calls, which the byte-for-byte comparisons below rely on.
REFINER_KWARGS = {}


def _options(checkpoint: str, **overrides) -> JobOptions:
    base = dict(model_type="tiny", checkpoint=checkpoint, device="cpu", workers=0, chunk_size=2, progress=False,
                refiner_kwargs=dict(REFINER_KWARGS))
    base.update(overrides)
    return JobOptions(**base)


def _read(path: str):
    with open(path) as handle:
        return json.load(handle)


def _reference_refinement(coco, image_dir, checkpoint, score_thr):
    """annotation id -> (mask, predicted IoU) from calling the refiner directly, one call per image with
    the masks the job refines (not crowd, score at least ``score_thr``)."""
    refiner = build_refiner(dict(type="SAMRefiner", model_type="tiny", checkpoint=checkpoint, device="cpu", **REFINER_KWARGS))
    references = {}
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"] and a["score"] >= score_thr]
        if not anns:
            continue
        coarse = np.stack([segmentation_to_mask(a["segmentation"], image["height"], image["width"]) for a in anns])
        result = refiner.refine(load_image(os.path.join(image_dir, image["file_name"])), coarse)
        for slot, ann in enumerate(anns):
            references[ann["id"]] = (result.masks[slot], float(result.iou_predictions[slot]))
    return references


def test_every_record_kept_with_consistent_bbox_area_and_reference_masks(coco_dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "refined.json")
    summary = refine_annotation_file(
        coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, score_thr=0.3, workers=2)
    )
    source, result = coco_dataset["data"], _read(out)

    assert summary.complete and summary.records == len(source["annotations"])
    assert result["images"] == source["images"] and result["categories"] == source["categories"]
    assert result["info"] == source["info"]
    assert [a["id"] for a in result["annotations"]] == [a["id"] for a in source["annotations"]]
    assert not os.path.exists(work_dir_for(out)), "the work directory is removed after a complete run"

    images = {image["id"]: image for image in source["images"]}
    references = _reference_refinement(source, coco_dataset["images"], tiny_checkpoint, score_thr=0.3)
    statuses = set()
    for before, after in zip(source["annotations"], result["annotations"]):
        image = images[before["image_id"]]
        height, width = image["height"], image["width"]
        for key, value in before.items():  # every field kept; only these three are recomputed
            if key not in ("segmentation", "bbox", "area"):
                assert after[key] == value, (before["id"], key)
        info = after[INFO_KEY]
        statuses.add(info["status"])
        mask = segmentation_to_mask(after["segmentation"], height, width)
        assert after["bbox"] == mask_to_xywh(mask), before["id"]
        assert after["area"] == int(mask.sum()), before["id"]
        coarse = segmentation_to_mask(before["segmentation"], height, width)
        if info["status"] == "passed_through":
            assert after["segmentation"] == before["segmentation"]
            assert np.array_equal(mask, coarse)
            expected_reason = "crowd" if before["iscrowd"] else "below_score_thr" if before["score"] < 0.3 else None
            if expected_reason:
                assert info["reason"] == expected_reason
        else:
            assert info["status"] == "refined" and before["score"] >= 0.3 and not before["iscrowd"]
            # the job's mask is exactly what the refiner gives for this image's masks in one call
            reference_mask, reference_iou = references[before["id"]]
            assert np.array_equal(mask, reference_mask), before["id"]
            inter, union = np.logical_and(mask, coarse).sum(), np.logical_or(mask, coarse).sum()
            assert info["iou_coarse_refined"] == pytest.approx(inter / union, abs=1e-4)
            assert info["pred_iou"] == pytest.approx(reference_iou, abs=1e-4)
    assert {"refined", "passed_through"} <= statuses

    written = _read(summary_path(out))
    assert written["records"] == summary.records
    assert written["refined"] + sum(written["passed_through"].values()) + sum(written["copied"].values()) == summary.records


def test_output_does_not_depend_on_batching_workers_or_chunking(coco_dataset, tiny_checkpoint, tmp_path):
    outputs = []
    for index, overrides in enumerate(
        [dict(workers=0, max_masks_per_batch=64, images_per_batch=4),
         dict(workers=2, max_masks_per_batch=1, images_per_batch=1),  # one image per refiner call
         dict(workers=1, max_masks_per_batch=3, images_per_batch=2, chunk_size=1)]
    ):
        out = str(tmp_path / f"out{index}.json")
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, **overrides))
        with open(out, "rb") as handle:
            outputs.append(handle.read())
    assert outputs[0] == outputs[1] == outputs[2]


def test_keep_coarse_stores_the_input_mask(coco_dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "out.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, keep_coarse=True))
    for before, after in zip(coco_dataset["data"]["annotations"], _read(out)["annotations"]):
        if after[INFO_KEY]["status"] == "refined":
            assert after["coarse_segmentation"] == before["segmentation"]
        else:
            assert "coarse_segmentation" not in after


def test_limit_keeps_only_the_first_images(coco_dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "out.json")
    summary = refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, limit=2))
    result = _read(out)
    first_two = [image["id"] for image in coco_dataset["data"]["images"][:2]]
    assert [image["id"] for image in result["images"]] == first_two
    expected = [a["id"] for a in coco_dataset["data"]["annotations"] if a["image_id"] in first_two]
    assert [a["id"] for a in result["annotations"]] == expected and summary.records == len(expected)


def test_changed_options_of_an_existing_job_are_refused(coco_dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "out.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, keep_work_dir=True))
    # throughput options may change ...
    refine_annotation_file(
        coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, keep_work_dir=True, workers=1, max_masks_per_batch=2)
    )
    # ... result-deciding ones may not
    with pytest.raises(WorkDirMismatchError, match="score_thr"):
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, score_thr=0.5))
    with pytest.raises(WorkDirMismatchError, match="iterations"):
        refine_annotation_file(
            coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, refiner_kwargs={**REFINER_KWARGS, "iterations": 2})
        )


def test_decoder_chunk_size_may_change_on_resume_where_it_cannot_change_results(coco_dataset, tiny_checkpoint, tmp_path):
    """On CPU each prompt set is decoded alone (batch invariant), so the decoder's chunk size is a throughput
    option there; where prompts are batched (CUDA) it can move pixels and stays result-deciding."""
    out = str(tmp_path / "out.json")
    first = _options(tiny_checkpoint, keep_work_dir=True, refiner_kwargs={**REFINER_KWARGS, "decoder_chunk_size": 8})
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, first)
    with open(out, "rb") as handle:
        before = handle.read()
    resumed = _options(tiny_checkpoint, keep_work_dir=True, refiner_kwargs={**REFINER_KWARGS, "decoder_chunk_size": 2})
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, resumed)  # not refused
    with open(out, "rb") as handle:
        assert handle.read() == before
    fresh = str(tmp_path / "fresh.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], fresh, _options(tiny_checkpoint, refiner_kwargs={
        **REFINER_KWARGS, "decoder_chunk_size": 2}))
    with open(fresh, "rb") as handle:
        assert handle.read() == before  # and the chunk size really changes nothing on CPU

    def decided(device, **kwargs):
        return JobOptions(device=device, refiner_kwargs=dict(decoder_chunk_size=8, **kwargs)).result_options()["refiner_kwargs"]

    assert "decoder_chunk_size" not in decided("cpu")
    assert decided("cuda") == {"decoder_chunk_size": 8} and decided("cuda:1") == {"decoder_chunk_size": 8}
    assert decided("cuda", batch_invariant=True) == {"batch_invariant": True}
    assert decided("cpu", batch_invariant=False) == {"batch_invariant": False, "decoder_chunk_size": 8}


def test_large_image_masks_are_split_into_bounded_groups_and_all_refined(coco_dataset, tiny_checkpoint, tmp_path, monkeypatch):
    from refine_hooks.jobs import worker

    out_whole = str(tmp_path / "whole.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out_whole, _options(tiny_checkpoint))
    # a budget of two masks' worth of pixels: every image with more masks is split into groups
    monkeypatch.setattr(worker, "MASK_PIXEL_BUDGET", 2 * 96 * 96)
    seen = []
    original = worker.prepare_image

    def recording(work, **kwargs):
        for item in original(work, **kwargs):
            seen.append((item.groups, item.masks.nbytes))
            yield item

    monkeypatch.setattr(worker, "prepare_image", recording)
    out_split = str(tmp_path / "split.json")
    summary = refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out_split, _options(tiny_checkpoint))
    assert any(groups > 1 for groups, _ in seen)
    assert all(nbytes <= 2 * 96 * 96 for _, nbytes in seen)
    whole, split = _read(out_whole)["annotations"], _read(out_split)["annotations"]
    assert [a["id"] for a in split] == [a["id"] for a in whole]
    assert [a[INFO_KEY]["status"] for a in split] == [a[INFO_KEY]["status"] for a in whole]
    assert summary.refined == sum(a[INFO_KEY]["status"] == "refined" for a in whole)
