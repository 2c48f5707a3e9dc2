"""COCO categories on LVIS annotations ("cocofied LVIS"): COCO val images evaluated against LVIS's more
precise masks, the AP* protocol of PointRend and the mask-refinement papers that follow it.

The 80 COCO categories are matched to LVIS categories by WordNet synset (the pairing LVIS publishes in
lvis-api ``data/coco_to_synset.json``). Works for LVIS v0.5 and v1 files alike: both carry ``synset`` on
every category.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Set

from refine_hooks.evaluation.results import check_annotation_lists

# (COCO category id, COCO name, WordNet synset of the matching LVIS category)
COCO_SYNSETS = (
    (1, "person", "person.n.01"), (2, "bicycle", "bicycle.n.01"), (3, "car", "car.n.01"),
    (4, "motorcycle", "motorcycle.n.01"), (5, "airplane", "airplane.n.01"), (6, "bus", "bus.n.01"),
    (7, "train", "train.n.01"), (8, "truck", "truck.n.01"), (9, "boat", "boat.n.01"),
    (10, "traffic light", "traffic_light.n.01"), (11, "fire hydrant", "fireplug.n.01"),
    (13, "stop sign", "stop_sign.n.01"), (14, "parking meter", "parking_meter.n.01"), (15, "bench", "bench.n.01"),
    (16, "bird", "bird.n.01"), (17, "cat", "cat.n.01"), (18, "dog", "dog.n.01"), (19, "horse", "horse.n.01"),
    (20, "sheep", "sheep.n.01"), (21, "cow", "beef.n.01"), (22, "elephant", "elephant.n.01"),
    (23, "bear", "bear.n.01"), (24, "zebra", "zebra.n.01"), (25, "giraffe", "giraffe.n.01"),
    (27, "backpack", "backpack.n.01"), (28, "umbrella", "umbrella.n.01"), (31, "handbag", "bag.n.04"),
    (32, "tie", "necktie.n.01"), (33, "suitcase", "bag.n.06"), (34, "frisbee", "frisbee.n.01"),
    (35, "skis", "ski.n.01"), (36, "snowboard", "snowboard.n.01"), (37, "sports ball", "ball.n.06"),
    (38, "kite", "kite.n.03"), (39, "baseball bat", "baseball_bat.n.01"),
    (40, "baseball glove", "baseball_glove.n.01"), (41, "skateboard", "skateboard.n.01"),
    (42, "surfboard", "surfboard.n.01"), (43, "tennis racket", "tennis_racket.n.01"), (44, "bottle", "bottle.n.01"),
    (46, "wine glass", "wineglass.n.01"), (47, "cup", "cup.n.01"), (48, "fork", "fork.n.01"),
    (49, "knife", "knife.n.01"), (50, "spoon", "spoon.n.01"), (51, "bowl", "bowl.n.03"),
    (52, "banana", "banana.n.02"), (53, "apple", "apple.n.01"), (54, "sandwich", "sandwich.n.01"),
    (55, "orange", "orange.n.01"), (56, "broccoli", "broccoli.n.01"), (57, "carrot", "carrot.n.01"),
    (58, "hot dog", "frank.n.02"), (59, "pizza", "pizza.n.01"), (60, "donut", "doughnut.n.02"),
    (61, "cake", "cake.n.03"), (62, "chair", "chair.n.01"), (63, "couch", "sofa.n.01"),
    (64, "potted plant", "pot.n.04"), (65, "bed", "bed.n.01"), (67, "dining table", "dining_table.n.01"),
    (70, "toilet", "toilet.n.02"), (72, "tv", "television_receiver.n.01"), (73, "laptop", "laptop.n.01"),
    (74, "mouse", "mouse.n.04"), (75, "remote", "remote_control.n.01"), (76, "keyboard", "computer_keyboard.n.01"),
    (77, "cell phone", "cellular_telephone.n.01"), (78, "microwave", "microwave.n.02"), (79, "oven", "oven.n.01"),
    (80, "toaster", "toaster.n.02"), (81, "sink", "sink.n.01"), (82, "refrigerator", "electric_refrigerator.n.01"),
    (84, "book", "book.n.01"), (85, "clock", "clock.n.01"), (86, "vase", "vase.n.01"),
    (87, "scissors", "scissors.n.01"), (88, "teddy bear", "teddy.n.01"), (89, "hair drier", "hand_blower.n.01"),
    (90, "toothbrush", "toothbrush.n.01"),
)


def _check_structure(lvis: Any, coco: Any, lvis_name: str, coco_name: str) -> None:
    """The parts of the files :func:`cocofy_lvis` reads, so that a malformed file gets a message naming
    it instead of a ``KeyError``."""
    try:
        check_annotation_lists(lvis, "an LVIS")
    except ValueError as error:
        raise ValueError(f"{lvis_name}: {error}") from None
    for where, items, fields in (("category", lvis["categories"], ("id",)), ("image", lvis["images"], ("id",)),
                                 ("annotation", lvis["annotations"], ("id", "image_id", "category_id"))):
        for index, item in enumerate(items):
            missing = [f for f in fields if not isinstance(item, dict) or f not in item]
            if missing:
                name = item.get("id") if isinstance(item, dict) else None
                raise ValueError(f"{lvis_name}: {where} #{index} (id {name}) has no '{missing[0]}'")
    if coco is not None:
        if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
            raise ValueError(f"{coco_name}: not a COCO annotation file (no 'images' list)")
        if any(not isinstance(img, dict) or "id" not in img for img in coco["images"]):
            raise ValueError(f"{coco_name}: an image entry has no 'id'")


def cocofy_lvis(lvis: Dict[str, Any], coco: Optional[Dict[str, Any]] = None,
                image_ids: Optional[Set[int]] = None, *, lvis_name: str = "the LVIS file",
                coco_name: str = "the COCO file") -> Dict[str, Any]:
    """Restrict an LVIS (v0.5 or v1) annotation dict to the 80 COCO categories and to COCO images.

    Args:
        lvis: loaded LVIS annotation file (not modified).
        coco: optional loaded COCO annotation file (e.g. ``instances_val2017.json``); its image ids choose
            the images kept (LVIS uses COCO's image ids) and its category entries (name, supercategory)
            are used. Needed for LVIS v1 val, whose images come from both COCO train2017 and val2017.
        image_ids: alternatively, the image ids to keep. Default: every LVIS image.
        lvis_name, coco_name: how messages name the two files (their paths, from the command line).

    Returns:
        A new annotation dict: COCO category ids and names (each category also keeps the LVIS
        ``synset``, ``frequency`` and the LVIS id as ``lvis_id``, so lvis-api can still compute APr/APc/APf);
        only annotations of those categories on kept images, renumbered 1..N in input order;
        each image's ``neg_category_ids`` and ``not_exhaustive_category_ids`` mapped to COCO ids (LVIS
        categories outside COCO dropped from the lists); ``info["cocofied"]`` records what was done and
        counts every annotation left out, by reason: ``dropped_other_categories`` (not one of the 80),
        ``dropped_other_images`` (an image not kept) and ``dropped_unknown_images`` (an image id that is
        not in the LVIS file's images at all: a damaged file).

    Raises ``ValueError`` naming the file if it lacks ``images`` / ``annotations`` / ``categories``, an
    entry lacks its ids, a category has no ``synset``, an annotation names an unknown category, or a COCO
    image asked for is not in the LVIS file.
    """
    _check_structure(lvis, coco, lvis_name, coco_name)
    lvis_cats = {c["id"]: c for c in lvis["categories"]}
    for c in lvis["categories"]:
        if "synset" not in c:
            raise ValueError(f"{lvis_name}: category {c.get('id')} ({c.get('name')}) has no 'synset'")
    by_synset = {c["synset"]: c for c in lvis["categories"]}
    coco_cats = {c["id"]: c for c in (coco or {}).get("categories", []) if isinstance(c, dict) and "id" in c}
    lvis_to_coco: Dict[int, int] = {}
    categories: List[Dict[str, Any]] = []
    missing: List[str] = []
    for coco_id, name, synset in COCO_SYNSETS:
        lvis_cat = by_synset.get(synset)
        if lvis_cat is None:
            missing.append(f"{name} ({synset})")
            continue
        lvis_to_coco[lvis_cat["id"]] = coco_id
        entry = {"id": coco_id, "name": name, "supercategory": coco_cats.get(coco_id, {}).get("supercategory", "")}
        entry.update({k: lvis_cat[k] for k in ("synset", "frequency") if k in lvis_cat})
        entry["lvis_id"] = lvis_cat["id"]
        categories.append(entry)

    if coco is not None:
        image_ids = {img["id"] for img in coco["images"]}
    lvis_image_ids = {img["id"] for img in lvis["images"]}
    if image_ids is not None:
        absent = sorted(image_ids - lvis_image_ids)
        if absent:
            raise ValueError(f"{len(absent)} images of {coco_name} are not in {lvis_name}, e.g. {absent[:10]} "
                             "(LVIS v0.5 val covers COCO val2017; LVIS v1 val covers it together with part of "
                             "train2017)")
    keep = lvis_image_ids if image_ids is None else image_ids

    images = []
    for img in lvis["images"]:
        if img["id"] not in keep:
            continue
        new = copy.deepcopy(img)
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            ids = img.get(key, [])
            unknown = [c for c in ids if c not in lvis_cats]
            if unknown:
                raise ValueError(f"{lvis_name}: image {img['id']}: {key} names unknown categories {unknown[:10]}")
            new[key] = sorted({lvis_to_coco[c] for c in ids if c in lvis_to_coco})
        images.append(new)

    annotations = []
    dropped = {"dropped_other_categories": 0, "dropped_other_images": 0, "dropped_unknown_images": 0}
    for ann in lvis["annotations"]:
        if ann["category_id"] not in lvis_cats:
            raise ValueError(f"{lvis_name}: annotation {ann.get('id')} (image {ann.get('image_id')}) has unknown "
                             f"category {ann['category_id']}")
        if ann["image_id"] not in lvis_image_ids:
            dropped["dropped_unknown_images"] += 1
            continue
        if ann["image_id"] not in keep:
            dropped["dropped_other_images"] += 1
            continue
        if ann["category_id"] not in lvis_to_coco:
            dropped["dropped_other_categories"] += 1
            continue
        new = copy.deepcopy(ann)
        new["category_id"] = lvis_to_coco[ann["category_id"]]
        new["id"] = len(annotations) + 1
        new.setdefault("iscrowd", 0)
        annotations.append(new)

    info = copy.deepcopy(lvis.get("info", {}))
    info["cocofied"] = {
        "description": "LVIS annotations restricted to the 80 COCO categories (matched by synset) and COCO images",
        "lvis_images": len(lvis["images"]), "images": len(images),
        "lvis_annotations": len(lvis["annotations"]), "annotations": len(annotations),
        **dropped,
        "categories_without_lvis_synset": missing,
    }
    out = {k: copy.deepcopy(v) for k, v in lvis.items() if k not in ("images", "annotations", "categories", "info")}
    out.update({"info": info, "images": images, "annotations": annotations, "categories": categories})
    return out
