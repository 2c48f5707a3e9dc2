#!/usr/bin/env python
"""Make "cocofied" LVIS: an LVIS v0.5 or v1 annotation file restricted to the 80 COCO categories (matched by
synset) and to COCO images, with COCO category ids.

    python tools/prepare_cocofied_lvis.py --lvis lvis_v0.5_val.json --coco instances_val2017.json \
        --out lvis_v0.5_val_cocofied.json
    python tools/evaluate.py --gt lvis_v0.5_val_cocofied.json --dt coco_results.json --lvis

Annotation ids are renumbered; each image's neg_category_ids and not_exhaustive_category_ids are mapped to
COCO ids. Categories keep LVIS's synset and frequency, so --lvis evaluation (the federated protocol, as
Detectron2 evaluates its lvis_v0.5_val_cocofied set) still reports APr/APc/APf.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from refine_hooks.evaluation.cocofied import cocofy_lvis


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lvis", required=True, help="LVIS v0.5 or v1 annotation json")
    parser.add_argument("--coco", help="COCO annotation json whose images to keep (e.g. instances_val2017.json); "
                                       "default: all LVIS images")
    parser.add_argument("--out", required=True, help="output json")
    args = parser.parse_args(argv)
    for path in (args.lvis, args.coco):
        if path is not None and not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    print(f"loading {args.lvis}", flush=True)
    with open(args.lvis) as f:
        lvis = json.load(f)
    coco = None
    if args.coco:
        with open(args.coco) as f:
            coco = json.load(f)
    try:
        out = cocofy_lvis(lvis, coco)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, args.out)
    info = out["info"]["cocofied"]
    print(f"{info['images']} of {info['lvis_images']} images, {info['annotations']} of {info['lvis_annotations']} "
          f"annotations, {len(out['categories'])} COCO categories -> {args.out}")
    if info["categories_without_lvis_synset"]:
        print("COCO categories with no LVIS synset in this file: " + ", ".join(info["categories_without_lvis_synset"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
