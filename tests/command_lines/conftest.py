"""The user's directory the command-line tests run the tools in (made once per session, copied per test)."""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict

import pytest
import torch

from refine_hooks.sam import build_tiny_sam, save_tiny_checkpoint
from tool_runner import DEMO


def _write_json(path: str, data) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle)


def _lvis_from(gt: dict) -> dict:
    """The demo ground truth as an LVIS file: synsets of COCO categories, frequencies, negative lists, no
    iscrowd."""
    lvis = json.loads(json.dumps(gt))
    for category, synset in zip(lvis["categories"], ("person.n.01", "car.n.01", "dog.n.01")):
        category.update(synset=synset, frequency="f")
    for image in lvis["images"]:
        image.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    for annotation in lvis["annotations"]:
        annotation.pop("iscrowd", None)
    return lvis


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> str:
    """A user's directory: the demo data plus every kind of file the table needs (made once, copied per row)."""
    root = str(tmp_path_factory.mktemp("template"))
    shutil.copytree(os.path.join(DEMO, "images"), os.path.join(root, "images"))
    shutil.copy(os.path.join(DEMO, "coarse.json"), os.path.join(root, "coarse.json"))
    shutil.copy(os.path.join(DEMO, "ground_truth.json"), os.path.join(root, "gt.json"))
    with open(os.path.join(root, "coarse.json")) as handle:
        coarse = json.load(handle)
    with open(os.path.join(root, "gt.json")) as handle:
        gt = json.load(handle)
    results = [{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in coarse["annotations"]]
    _write_json(os.path.join(root, "results.json"), results)
    _write_json(os.path.join(root, "results_null_score.json"), [dict(r, score=None) if i == 2 else r
                                                                 for i, r in enumerate(results)])
    by_image: Dict[int, list] = {}
    for record in results:
        by_image.setdefault(record["image_id"], []).append(record)
    torch.save([{"image_id": i, "instances": v} for i, v in by_image.items()], os.path.join(root, "predictions.pth"))
    shutil.copy(os.path.join(root, "coarse.json"), os.path.join(root, "coarse.summary.json"))

    save_tiny_checkpoint(os.path.join(root, "tiny.pth"))
    torch.save(build_tiny_sam().state_dict(), os.path.join(root, "plain_state.pth"))  # fits no official model
    with open(os.path.join(root, "tiny.pth"), "rb") as handle:
        data = handle.read()
    with open(os.path.join(root, "truncated.pth"), "wb") as handle:
        handle.write(data[: len(data) // 3])
    with open(os.path.join(root, "garbage.pth"), "wb") as handle:
        handle.write(b"this is not a checkpoint\n" * 20)
    with open(os.path.join(root, "bad.json"), "w") as handle:
        handle.write('{"images": [1, 2,')
    torch.save({"state_dict": {}, "meta": {"note": "a detector checkpoint, named like the output"}},
               os.path.join(root, "det.pkl"))
    with open(os.path.join(root, "a_file"), "w") as handle:
        handle.write("a file where a directory is expected\n")
    os.mkdir(os.path.join(root, "a_dir"))

    lvis = _lvis_from(gt)
    _write_json(os.path.join(root, "lvis.json"), lvis)
    _write_json(os.path.join(root, "lvis_no_categories.json"), {k: v for k, v in lvis.items() if k != "categories"})
    no_category = json.loads(json.dumps(lvis))
    del no_category["annotations"][1]["category_id"]
    _write_json(os.path.join(root, "lvis_no_category_id.json"), no_category)
    _write_json(os.path.join(root, "gt_empty.json"), dict(gt, annotations=[]))
    _write_json(os.path.join(root, "gt_without_annotations.json"), {k: v for k, v in gt.items() if k != "annotations"})
    no_crowd = json.loads(json.dumps(gt))
    del no_crowd["annotations"][2]["iscrowd"]
    _write_json(os.path.join(root, "gt_no_iscrowd.json"), no_crowd)
    shifted = json.loads(json.dumps(coarse))
    for image in shifted["images"]:
        image["id"] += 100
    for annotation in shifted["annotations"]:
        annotation["image_id"] += 100
    _write_json(os.path.join(root, "refined_shifted.json"), shifted)
    missing_image = json.loads(json.dumps(coarse))
    missing_image["images"][1]["file_name"] = "not_there.jpg"
    _write_json(os.path.join(root, "coarse_missing_image.json"), missing_image)

    os.symlink("gt.json", os.path.join(root, "link_to_gt.json"))
    os.symlink("coarse.json", os.path.join(root, "link_to_coarse.json"))
    os.link(os.path.join(root, "lvis.json"), os.path.join(root, "hardlink_to_lvis.json"))
    return root


