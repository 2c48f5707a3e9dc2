"""Cocofied LVIS on a small made-up LVIS file: categories, ids, negatives, images."""

from __future__ import annotations

import json
import runpy
import sys

import pytest

from refine_hooks.evaluation import cocofy_lvis, evaluate_lvis
from refine_hooks.evaluation.cocofied import COCO_SYNSETS


def made_up_lvis():
    # LVIS ids deliberately unrelated to COCO ids; two LVIS categories have no COCO counterpart.
    cats = [
        {"id": 1, "name": "aerosol_can", "synset": "aerosol.n.02", "frequency": "c"},
        {"id": 2, "name": "person", "synset": "person.n.01", "frequency": "f"},
        {"id": 3, "name": "beef_(food)", "synset": "beef.n.01", "frequency": "r"},  # COCO "cow" (21)
        {"id": 4, "name": "alligator", "synset": "alligator.n.02", "frequency": "r"},
        {"id": 5, "name": "hair_dryer", "synset": "hand_blower.n.01", "frequency": "c"},  # COCO 89
    ]
    square = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    images = [
        {"id": 139, "height": 64, "width": 64, "neg_category_ids": [4, 5], "not_exhaustive_category_ids": [1, 2]},
        {"id": 285, "height": 64, "width": 64, "neg_category_ids": [2], "not_exhaustive_category_ids": []},
        {"id": 9999, "height": 64, "width": 64, "neg_category_ids": [3], "not_exhaustive_category_ids": [5]},
    ]
    anns = [
        {"id": 101, "image_id": 139, "category_id": 2, "segmentation": square, "area": 400.0, "bbox": [10, 10, 20, 20]},
        {"id": 102, "image_id": 139, "category_id": 1, "segmentation": square, "area": 400.0, "bbox": [10, 10, 20, 20]},
        {"id": 103, "image_id": 285, "category_id": 3, "segmentation": square, "area": 400.0, "bbox": [10, 10, 20, 20]},
        {"id": 104, "image_id": 9999, "category_id": 5, "segmentation": square, "area": 400.0, "bbox": [10, 10, 20, 20]},
        {"id": 105, "image_id": 285, "category_id": 4, "segmentation": square, "area": 400.0, "bbox": [10, 10, 20, 20]},
        {"id": 106, "image_id": 139, "category_id": 3, "segmentation": square, "area": 400.0, "bbox": [10, 10, 20, 20]},
    ]
    return {"info": {"version": "made-up"}, "licenses": [], "images": images, "annotations": anns, "categories": cats}


COCO = {"images": [{"id": 139}, {"id": 285}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 21, "name": "cow", "supercategory": "animal"},
                       {"id": 89, "name": "hair drier", "supercategory": "indoor"}]}


def test_coco_table_is_the_80_categories():
    assert len(COCO_SYNSETS) == 80
    assert len({c[0] for c in COCO_SYNSETS}) == 80 and len({c[2] for c in COCO_SYNSETS}) == 80


def test_categories_ids_and_negatives():
    lvis = made_up_lvis()
    out = cocofy_lvis(lvis, COCO)
    assert lvis == made_up_lvis()  # input untouched
    cats = {c["id"]: c for c in out["categories"]}
    assert sorted(cats) == [1, 21, 89]  # matched by synset, COCO ids
    assert cats[21]["name"] == "cow" and cats[21]["supercategory"] == "animal"
    assert cats[21]["lvis_id"] == 3 and cats[21]["frequency"] == "r" and cats[89]["synset"] == "hand_blower.n.01"
    assert len(out["info"]["cocofied"]["categories_without_lvis_synset"]) == 77
    # Only COCO images (9999 is not in the COCO file) and only COCO categories.
    assert [i["id"] for i in out["images"]] == [139, 285]
    anns = out["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3]  # renumbered in input order
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(139, 1), (285, 21), (139, 21)]
    assert all(a["iscrowd"] == 0 for a in anns)
    images = {i["id"]: i for i in out["images"]}
    assert images[139]["neg_category_ids"] == [89]  # alligator (no COCO synset) dropped
    assert images[139]["not_exhaustive_category_ids"] == [1]  # aerosol dropped, person -> 1
    assert images[285]["neg_category_ids"] == [1]


def test_all_images_without_coco_file_and_errors():
    out = cocofy_lvis(made_up_lvis())
    assert [i["id"] for i in out["images"]] == [139, 285, 9999]
    assert out["images"][2]["not_exhaustive_category_ids"] == [89]
    with pytest.raises(ValueError, match="not in the LVIS file"):
        cocofy_lvis(made_up_lvis(), {"images": [{"id": 1}], "categories": []})
    broken = made_up_lvis()
    broken["annotations"][0]["category_id"] = 77
    with pytest.raises(ValueError, match="annotation 101"):
        cocofy_lvis(broken)
    broken = made_up_lvis()
    del broken["annotations"][2]["category_id"]
    with pytest.raises(ValueError, match="lvis.json: annotation #2 .id 103. has no 'category_id'"):
        cocofy_lvis(broken, lvis_name="lvis.json")
    with pytest.raises(ValueError, match="no 'categories' list"):
        cocofy_lvis({k: v for k, v in made_up_lvis().items() if k != "categories"})


def test_every_annotation_left_out_is_counted():
    lvis = made_up_lvis()
    lvis["annotations"].append(dict(lvis["annotations"][0], id=107, image_id=555))  # an image the file lacks
    info = cocofy_lvis(lvis, COCO)["info"]["cocofied"]
    # 6 + 1 annotations: 3 kept, 104 on image 9999 (not a COCO image), 102 and 105 of non-COCO categories
    assert (info["annotations"], info["dropped_other_images"], info["dropped_other_categories"],
            info["dropped_unknown_images"]) == (3, 1, 2, 1)


def test_output_evaluates_with_lvis_protocol_and_tool(tmp_path, monkeypatch, capsys):
    lvis_path, coco_path, out_path = tmp_path / "lvis.json", tmp_path / "coco.json", tmp_path / "out.json"
    lvis_path.write_text(json.dumps(made_up_lvis()))
    coco_path.write_text(json.dumps(COCO))
    monkeypatch.setattr(sys, "argv", ["prepare_cocofied_lvis.py", "--lvis", str(lvis_path), "--coco", str(coco_path),
                                      "--out", str(out_path)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("tools/prepare_cocofied_lvis.py", run_name="__main__")
    assert exit_info.value.code == 0
    assert "2 of 3 images, 3 of 6 annotations, 3 COCO categories" in capsys.readouterr().out
    out = json.loads(out_path.read_text())
    assert out == cocofy_lvis(made_up_lvis(), COCO)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "segmentation": a["segmentation"]} for a in out["annotations"]]
    result = evaluate_lvis(out, dets, iou_types=["segm"], progress=False)
    assert result["segm/AP"] == pytest.approx(1.0)
