"""Input kinds (COCO, result list, Detectron2 .pth) and bad input, each handled as the options say."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from refine_hooks.data.annotations import AnnotationFileError, load_annotation_file
from refine_hooks.data.images import ImageReadError
from refine_hooks.data.masks import mask_to_xywh, segmentation_to_mask
from refine_hooks.jobs import JobInputError, JobOptions, RefinerUnavailableError, refine_annotation_file, summary_path
from refine_hooks.jobs.plan import input_warnings
from refine_hooks.jobs.worker import INFO_KEY

REFINER_KWARGS = {}


def _options(checkpoint, **overrides):
    base = dict(model_type="tiny", checkpoint=checkpoint, device="cpu", workers=0, chunk_size=2, progress=False,
                refiner_kwargs=dict(REFINER_KWARGS))
    base.update(overrides)
    return JobOptions(**base)


def _read(path):
    with open(path) as handle:
        return json.load(handle)


def _write(path, data):
    with open(path, "w") as handle:
        json.dump(data, handle)
    return str(path)


def _segmentations_by_key(annotations):
    return {(a["image_id"], a["score"]): a["segmentation"] for a in annotations}


def test_result_list_and_detectron2_pth_give_the_masks_of_the_coco_run(coco_dataset, tiny_checkpoint, tmp_path):
    coco_out = str(tmp_path / "coco_out.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], coco_out, _options(tiny_checkpoint))
    by_key = _segmentations_by_key(_read(coco_out)["annotations"])

    source = [a for a in coco_dataset["data"]["annotations"] if not a["iscrowd"]]
    results = [{"image_id": a["image_id"], "category_id": 0, "segmentation": a["segmentation"], "score": a["score"]}
               for a in source]
    results_path = _write(tmp_path / "results.json", results)
    out = str(tmp_path / "results_out.json")
    refine_annotation_file(results_path, coco_dataset["images"], out, _options(tiny_checkpoint, image_info=coco_dataset["ann"]))
    refined = _read(out)
    assert len(refined) == len(results)
    for before, after in zip(results, refined):
        assert {k: v for k, v in after.items() if k not in ("segmentation", "bbox", "area", INFO_KEY)} == \
            {k: v for k, v in before.items() if k != "segmentation"}
        assert after["segmentation"] == by_key[(before["image_id"], before["score"])]

    # Detectron2's COCOEvaluator file: a list of {"image_id", "instances": [COCO result dicts]}; counts may be bytes
    predictions = {}
    for index, record in enumerate(results):
        instance = dict(record)
        if index % 2 == 0 and isinstance(instance["segmentation"], dict):
            instance["segmentation"] = {**instance["segmentation"], "counts": instance["segmentation"]["counts"].encode()}
        predictions.setdefault(record["image_id"], []).append(instance)
    pth = str(tmp_path / "instances_predictions.pth")
    torch.save([{"image_id": i, "instances": v, "file_extra": 1} for i, v in predictions.items()], pth)
    pth_out = str(tmp_path / "refined_predictions.pth")
    json_out = str(tmp_path / "refined_predictions.json")  # a neighbour the .pth output's summary must not hit
    refine_annotation_file(results_path, coco_dataset["images"], json_out, _options(tiny_checkpoint, image_info=coco_dataset["ann"]))
    summary = refine_annotation_file(pth, coco_dataset["images"], pth_out, _options(tiny_checkpoint, image_info=coco_dataset["ann"]))
    assert summary_path(pth_out) == pth_out + ".summary.json" and summary_path(json_out) == str(tmp_path / "refined_predictions.summary.json")
    assert _read(summary_path(pth_out))["output"] == pth_out and _read(summary_path(json_out))["output"] == json_out
    written = torch.load(pth_out, weights_only=True)
    assert [p["image_id"] for p in written] == list(predictions) and all(p["file_extra"] == 1 for p in written)
    flat = [instance for prediction in written for instance in prediction["instances"]]
    assert summary.records == len(flat) == len(results)
    for instance in flat:
        expected = by_key[(instance["image_id"], instance["score"])]
        if instance[INFO_KEY]["status"] == "refined":
            assert instance["segmentation"] == expected and isinstance(instance["segmentation"]["counts"], str)


def test_result_list_without_image_info_is_refused(coco_dataset, tiny_checkpoint, tmp_path):
    path = _write(tmp_path / "results.json", [{"image_id": 1000, "segmentation": [[1, 1, 5, 1, 5, 5]], "score": 1.0}])
    with pytest.raises(ValueError, match="--image-info"):
        refine_annotation_file(path, coco_dataset["images"], str(tmp_path / "o.json"), _options(tiny_checkpoint))


def _first_image_with_annotations(data):
    image_id = data["annotations"][0]["image_id"]
    return next(image for image in data["images"] if image["id"] == image_id)


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_missing_or_broken_image_stops_before_work_or_is_copied(coco_dataset, tiny_checkpoint, tmp_path, damage):
    data = coco_dataset["data"]
    # the last JPEG with annotations: a truncated one is found after earlier chunks were written
    image = [i for i in data["images"] if i["file_name"].endswith(".jpg") and any(a["image_id"] == i["id"] for a in data["annotations"])][-1]
    path = os.path.join(coco_dataset["images"], image["file_name"])
    if damage == "missing":
        os.remove(path)
    elif damage == "garbage":
        with open(path, "wb") as handle:
            handle.write(b"this is not a JPEG at all" * 10)
    else:  # a valid header with the data cut off: only decoding finds it
        with open(path, "rb") as handle:
            head = handle.read()
        with open(path, "wb") as handle:
            handle.write(head[: len(head) // 3])

    out = str(tmp_path / "out.json")
    error = JobInputError if damage != "truncated" else ImageReadError
    with pytest.raises(error, match=image["file_name"]):  # workers: the error crosses the DataLoader
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, workers=1))
    assert not os.path.exists(out)
    if damage != "truncated":  # refused before any work: nothing is left behind
        assert not os.path.exists(out + ".work")
    else:  # found while decoding: the chunks before it are kept
        assert [n for n in os.listdir(out + ".work") if n.startswith("chunk-")]

    # the same output, now skipping: a refused run did no work, and chunks finished before a truncated
    # image are what a skipping run writes, so the job goes on; the file equals a fresh skipping run's
    summary = refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out,
                                     _options(tiny_checkpoint, skip_missing_images=True))
    fresh = str(tmp_path / "fresh.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], fresh, _options(tiny_checkpoint, skip_missing_images=True))
    with open(out, "rb") as a, open(fresh, "rb") as b:
        assert a.read() == b.read()
    result = _read(out)
    mine = [(b, a) for b, a in zip(data["annotations"], result["annotations"]) if b["image_id"] == image["id"]]
    assert mine and all(a[INFO_KEY]["status"] == "copied" and a[INFO_KEY]["reason"].startswith("image_unreadable") for _, a in mine)
    assert all({k: v for k, v in a.items() if k != INFO_KEY} == b for b, a in mine), "copied records are unchanged"
    assert summary.copied == {"image_unreadable": len(mine)} and summary.records == len(data["annotations"])


def test_mask_size_mismatch_and_unknown_image_name_the_record(coco_dataset, tiny_checkpoint, tmp_path):
    data = json.loads(json.dumps(coco_dataset["data"]))
    bad = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict) and not a["iscrowd"])
    bad["segmentation"] = {"size": [7, 9], "counts": bad["segmentation"]["counts"]}
    orphan = dict(data["annotations"][0], id=999, image_id=424242)
    data["annotations"].append(orphan)
    path = _write(tmp_path / "bad.json", data)
    image = next(i for i in data["images"] if i["id"] == bad["image_id"])

    with pytest.raises(JobInputError) as raised:
        refine_annotation_file(path, coco_dataset["images"], str(tmp_path / "o.json"), _options(tiny_checkpoint))
    message = str(raised.value)
    assert f"annotation id {bad['id']}" in message and image["file_name"] in message and "7x9" in message
    assert "annotation id 999" in message and "424242" in message

    out = str(tmp_path / "skipped.json")
    summary = refine_annotation_file(path, coco_dataset["images"], out, _options(tiny_checkpoint, skip_invalid_records=True))
    by_id = {a["id"]: a for a in _read(out)["annotations"]}
    assert len(by_id) == len(data["annotations"])
    for record in (bad, orphan):
        assert by_id[record["id"]][INFO_KEY]["status"] == "copied"
        assert by_id[record["id"]]["segmentation"] == record["segmentation"]
    assert summary.copied == {"invalid_record": 2}
    for annotation in by_id.values():  # everything else is consistent
        if annotation[INFO_KEY]["status"] != "copied":
            info = next(i for i in data["images"] if i["id"] == annotation["image_id"])
            mask = segmentation_to_mask(annotation["segmentation"], info["height"], info["width"])
            assert annotation["bbox"] == mask_to_xywh(mask) and annotation["area"] == int(mask.sum())


def test_repeated_annotation_ids_and_unknown_categories_are_refined_kept_and_warned(coco_dataset, tiny_checkpoint,
                                                                                     tmp_path, caplog):
    assert input_warnings(load_annotation_file(coco_dataset["ann"])) == []  # the generated file is clean
    data = json.loads(json.dumps(coco_dataset["data"]))
    annotations = data["annotations"]
    annotations[1]["id"] = annotations[0]["id"]
    annotations[2]["category_id"] = annotations[3]["category_id"] = 77
    path = _write(tmp_path / "odd.json", data)
    out = str(tmp_path / "o.json")
    with caplog.at_level("WARNING", logger="refine_hooks.jobs.run"):
        summary = refine_annotation_file(path, coco_dataset["images"], out, _options(tiny_checkpoint))

    written = _read(out)["annotations"]
    assert [(a["id"], a["category_id"]) for a in written] == [(a["id"], a["category_id"]) for a in annotations]
    assert summary.copied == {} and summary.refined > 0
    repeated, unknown = summary.input_warnings
    assert f"id {annotations[0]['id']}: records #0, #1" in repeated and "not unique" not in repeated
    assert "category_id 77: 2, the first annotation id" in unknown and "(record #2)" in unknown
    assert _read(summary_path(out))["input_warnings"] == summary.input_warnings
    assert [r.getMessage() for r in caplog.records] == [f"warning: {path}: {w}" for w in summary.input_warnings]
    assert all(f"warning: {w}" in summary.text() for w in summary.input_warnings)


def test_an_image_id_naming_two_images_is_refused_and_a_repeated_entry_is_one_image(coco_dataset, tiny_checkpoint, tmp_path):
    data = json.loads(json.dumps(coco_dataset["data"]))
    first, other = data["images"][0], data["images"][3]
    assert (first["height"], first["width"]) == (other["height"], other["width"])  # the masks would fit either file
    conflicting = dict(data, images=[*data["images"], dict(other, id=first["id"])])
    with pytest.raises(AnnotationFileError) as raised:
        refine_annotation_file(_write(tmp_path / "two.json", conflicting), coco_dataset["images"], str(tmp_path / "o.json"),
                               _options(tiny_checkpoint))
    message = str(raised.value)
    last = len(conflicting["images"]) - 1
    assert f"images[0] and images[{last}]" in message and first["file_name"] in message and other["file_name"] in message
    assert not os.path.exists(str(tmp_path / "o.json.work"))
    not_an_entry = dict(data, images=[*data["images"], 5])
    with pytest.raises(AnnotationFileError, match=rf"images\[{len(data['images'])}\] has no 'id'"):
        load_annotation_file(_write(tmp_path / "entry.json", not_an_entry))

    repeated = dict(data, images=[*data["images"], dict(first)])
    plain_out, repeated_out = str(tmp_path / "plain.json"), str(tmp_path / "repeated.json")
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], plain_out, _options(tiny_checkpoint))
    summary = refine_annotation_file(_write(tmp_path / "rep.json", repeated), coco_dataset["images"], repeated_out,
                                     _options(tiny_checkpoint))
    assert summary.images == len({i["id"] for i in data["images"] if any(a["image_id"] == i["id"] for a in data["annotations"])})
    assert _read(repeated_out)["annotations"] == _read(plain_out)["annotations"]
    assert _read(repeated_out)["images"] == repeated["images"]  # the file is written back as it came


def test_phoenix_without_a_refiner_checkpoint_is_refused_before_reading_anything(tmp_path):
    with pytest.raises(RefinerUnavailableError, match="--refiner-checkpoint"):
        refine_annotation_file(str(tmp_path / "absent.json"), str(tmp_path), str(tmp_path / "o.json"), JobOptions(refiner="phoenix"))
    assert not (tmp_path / "o.json.work").exists()


def test_min_area_passes_small_masks_through(coco_dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "out.json")
    areas = []
    for a in coco_dataset["data"]["annotations"]:
        image = next(i for i in coco_dataset["data"]["images"] if i["id"] == a["image_id"])
        areas.append(int(segmentation_to_mask(a["segmentation"], image["height"], image["width"]).sum()))
    threshold = int(np.median(areas))
    refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, _options(tiny_checkpoint, min_area=threshold))
    for area, before, after in zip(areas, coco_dataset["data"]["annotations"], _read(out)["annotations"]):
        if area < threshold and not before["iscrowd"]:
            assert after[INFO_KEY] == {"status": "passed_through", "reason": "below_min_area", "pred_iou": None, "iou_coarse_refined": 1.0}
            assert after["segmentation"] == before["segmentation"]


def test_output_named_like_another_kind_or_like_an_input_is_refused_before_work(coco_dataset, tiny_checkpoint, tmp_path):
    ann = coco_dataset["ann"]
    with pytest.raises(JobInputError, match="must end in .json"):
        refine_annotation_file(ann, coco_dataset["images"], str(tmp_path / "o.pth"), _options(tiny_checkpoint))
    pth = str(tmp_path / "p.pth")
    torch.save([], pth)
    with pytest.raises(JobInputError, match="must end in .pth or .pt"):
        refine_annotation_file(pth, coco_dataset["images"], str(tmp_path / "o.json"), _options(tiny_checkpoint, image_info=ann))
    link = tmp_path / "link.json"
    os.symlink(ann, link)
    with open(ann, "rb") as handle:
        before = handle.read()
    with pytest.raises(JobInputError, match="refusing to overwrite"):
        refine_annotation_file(ann, coco_dataset["images"], str(link), _options(tiny_checkpoint))
    with open(ann, "rb") as handle:
        assert handle.read() == before
    assert not os.path.exists(str(link) + ".work")


def test_unknown_scores_follow_one_rule(coco_dataset, tiny_checkpoint, tmp_path):
    """Missing, null and NaN scores are unknown: refined at --score-thr 0, passed through (no_score) above it;
    a score that is not a number is an invalid record."""
    data = json.loads(json.dumps(coco_dataset["data"]))
    objects = [a for a in data["annotations"] if not a["iscrowd"]]
    del objects[0]["score"]
    objects[1]["score"] = None
    objects[2]["score"] = float("nan")  # json writes NaN, Python reads it back
    objects[3]["score"] = 0.9
    objects[4]["score"] = 0.1
    path = _write(tmp_path / "scores.json", data)
    unknown = {objects[k]["id"] for k in range(3)}

    def statuses(score_thr):
        out = str(tmp_path / f"out_{score_thr}.json")
        refine_annotation_file(path, coco_dataset["images"], out,
                               _options(tiny_checkpoint, score_thr=score_thr, refiner_kwargs={"iterations": 1}))
        return {a["id"]: a[INFO_KEY] for a in _read(out)["annotations"]}

    at_zero = statuses(0.0)
    assert all(at_zero[i]["status"] in ("refined", "passed_through") and at_zero[i]["reason"] != "no_score" for i in unknown)
    assert all(at_zero[i]["reason"] not in ("no_score", "below_score_thr") for i in unknown)
    above = statuses(0.5)
    assert all(above[i] == {"status": "passed_through", "reason": "no_score", "pred_iou": None, "iou_coarse_refined": 1.0}
               for i in unknown)
    assert above[objects[4]["id"]]["reason"] == "below_score_thr"
    assert above[objects[3]["id"]]["reason"] != "below_score_thr"

    objects[3]["score"] = "high"
    path = _write(tmp_path / "text_score.json", data)
    with pytest.raises(JobInputError, match=f"annotation id {objects[3]['id']}.*score 'high' is not a number"):
        refine_annotation_file(path, coco_dataset["images"], str(tmp_path / "o.json"), _options(tiny_checkpoint))
