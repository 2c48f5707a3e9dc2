"""projects/tools/make_train5k.py: the same images for ground truth and every pseudo-label file."""

from __future__ import annotations

import importlib.util
import json
import os

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module():
    spec = importlib.util.spec_from_file_location("make_train5k", os.path.join(REPO, "projects", "tools", "make_train5k.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_subset_keeps_common_images_of_all_kinds(coco_dataset, tmp_path):
    data = coco_dataset["data"]
    results = [{"image_id": a["image_id"], "category_id": 1, "segmentation": a["segmentation"], "score": 0.5}
               for a in data["annotations"] if not a["iscrowd"] and isinstance(a["segmentation"], dict)]
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    pth = str(tmp_path / "instances_predictions.pth")
    by_image = {}
    for record in results:
        by_image.setdefault(record["image_id"], []).append({**record, "category_id": 0})  # contiguous id
    torch.save([{"image_id": k, "instances": v} for k, v in list(by_image.items())[:3]], pth)

    written = _module().make_subset(coco_dataset["ann"], [coco_dataset["ann"], str(results_path), pth],
                                    str(tmp_path / "subset"), num_images=2, seed=1, class_agnostic=True)
    with open(written["gt"]) as handle:
        gt = json.load(handle)
    chosen = {image["id"] for image in gt["images"]}
    assert len(chosen) == 2 and chosen <= set(list(by_image)[:3])
    assert {a["image_id"] for a in gt["annotations"]} == chosen
    assert gt["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    for name in ("pseudo", "results", "instances_predictions"):
        with open(written[name]) as handle:
            records = json.load(handle)
        assert records and {r["image_id"] for r in records} == chosen
        assert all(r["category_id"] == 1 and "score" in r for r in records)
