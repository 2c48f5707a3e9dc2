#!/usr/bin/env python
r"""Make "cocofied" LVIS: an LVIS v0.5 or v1 annotation file restricted to the 80 COCO categories (matched by
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
import sys

from refine_hooks import cli
from refine_hooks.data.annotations import atomic_write, load_json
from refine_hooks.evaluation.cocofied import cocofy_lvis


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lvis", required=True, help="LVIS v0.5 or v1 annotation json")
    parser.add_argument("--coco", help="COCO annotation json whose images to keep (e.g. instances_val2017.json); "
                                       "default: all LVIS images")
    parser.add_argument("--out", required=True, help="output json")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    inputs = {"--lvis": args.lvis, "--coco": args.coco}
    cli.require_files(inputs)
    cli.check_output_path("--out", args.out, suffixes=(".json",), what="a JSON annotation file")
    cli.refuse_overwriting_inputs({"--out": args.out}, inputs)
    print(f"loading {args.lvis}", flush=True)
    lvis = load_json(args.lvis)
    coco = load_json(args.coco) if args.coco else None
    out = cocofy_lvis(lvis, coco, lvis_name=f"--lvis {args.lvis}", coco_name=f"--coco {args.coco}")
    atomic_write(args.out, lambda handle: json.dump(out, handle))
    info = out["info"]["cocofied"]
    print(f"{info['images']} of {info['lvis_images']} images, {info['annotations']} of {info['lvis_annotations']} "
          f"annotations, {len(out['categories'])} COCO categories -> {args.out}")
    print(f"annotations left out: {info['dropped_other_categories']} of other categories, "
          f"{info['dropped_other_images']} on images not kept, "
          f"{info['dropped_unknown_images']} on image ids that are not in {args.lvis}'s images")
    if info["dropped_unknown_images"]:
        print(f"warning: {info['dropped_unknown_images']} annotations of {args.lvis} name images the file does not "
              "have; the file may be damaged", file=sys.stderr)
    if info["categories_without_lvis_synset"]:
        print("COCO categories with no LVIS synset in this file: " + ", ".join(info["categories_without_lvis_synset"]))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, errors=(ValueError,)))
