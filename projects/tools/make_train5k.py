#!/usr/bin/env python
"""Cut a 5K-image ground-truth subset of a training set and the matching part of pseudo-label files,
so that ``tools/evaluate.py`` measures pseudo-label quality before and after refinement.

    python projects/tools/make_train5k.py --gt coco/annotations/instances_train2017.json \
        --pseudo coarse.json refined.json --out-dir train5k [--num-images 5000] [--class-agnostic]
    python tools/evaluate.py --gt train5k/train5k_gt.json \
        --dt train5k/coarse.train5k.json --compare train5k/refined.train5k.json

The images are drawn (fixed seed) from those that have ground truth and appear in every pseudo-label
file, so all files are scored on the same images. Pseudo-label files may be COCO annotation files
(records without a ``score`` get 1.0), COCO result lists or Detectron2 ``instances_predictions.pth``
(contiguous category ids are mapped back through the ground truth's categories).
``--class-agnostic`` maps every category to one ``object`` class (CutLER's pseudo-labels).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Any, Dict, List, Optional

from refine_hooks.data.predictions import load_predictions

AGNOSTIC_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def read_pseudo_labels(path: str, gt: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Pseudo-labels of any supported kind as COCO result dicts (``score`` 1.0 where there is none)."""
    if path.endswith(".json"):
        with open(path) as handle:
            data = json.load(handle)
        if isinstance(data, dict) and "annotations" in data:
            return [
                {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                 "score": float(a.get("score", 1.0))}
                for a in data["annotations"] if not a.get("iscrowd", 0)
            ]
    return load_predictions(path, gt)


def make_subset(gt_path: str, pseudo_paths: List[str], out_dir: str, num_images: int = 5000, seed: int = 0,
                class_agnostic: bool = False) -> Dict[str, str]:
    """Write ``train5k_gt.json`` and ``<name>.train5k.json`` per pseudo file; returns name -> path."""
    with open(gt_path) as handle:
        gt = json.load(handle)
    pseudo = {path: read_pseudo_labels(path, gt) for path in pseudo_paths}
    with_gt = {a["image_id"] for a in gt["annotations"]}
    common = with_gt.intersection(*({r["image_id"] for r in records} for records in pseudo.values()))
    ordered = [image["id"] for image in gt["images"] if image["id"] in common]
    if not ordered:
        raise ValueError("no image has both ground truth and pseudo-labels in every file")
    chosen = set(random.Random(seed).sample(ordered, min(num_images, len(ordered))))

    subset = {
        "info": gt.get("info", {}),
        "images": [image for image in gt["images"] if image["id"] in chosen],
        "annotations": [dict(a) for a in gt["annotations"] if a["image_id"] in chosen],
        "categories": [AGNOSTIC_CATEGORY] if class_agnostic else gt["categories"],
    }
    if class_agnostic:
        for annotation in subset["annotations"]:
            annotation["category_id"] = AGNOSTIC_CATEGORY["id"]
    os.makedirs(out_dir, exist_ok=True)
    written = {"gt": os.path.join(out_dir, "train5k_gt.json")}
    with open(written["gt"], "w") as handle:
        json.dump(subset, handle)
    for path, records in pseudo.items():
        kept = [dict(r) for r in records if r["image_id"] in chosen]
        if class_agnostic:
            for record in kept:
                record["category_id"] = AGNOSTIC_CATEGORY["id"]
        name = os.path.splitext(os.path.basename(path))[0]
        written[name] = os.path.join(out_dir, f"{name}.train5k.json")
        with open(written[name], "w") as handle:
            json.dump(kept, handle)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="COCO annotation file with ground truth for the training images")
    parser.add_argument("--pseudo", nargs="+", required=True, help="pseudo-label files (coarse, refined, ...)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-agnostic", action="store_true")
    args = parser.parse_args(argv)
    try:
        written = make_subset(args.gt, args.pseudo, args.out_dir, args.num_images, args.seed, args.class_agnostic)
    except (ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
