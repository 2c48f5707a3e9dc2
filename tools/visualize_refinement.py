"""Draw coarse (red) vs refined (green) mask outlines of COCO files into one PNG.

    python tools/visualize_refinement.py --coarse COARSE.json --refined REFINED.json --images DIR --out overlay.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from refine_hooks.data.images import load_image
from refine_hooks.data.masks import segmentation_to_mask
from refine_hooks.visualize import coarse_vs_refined, stack_rows


def _records_by_image(path: Path):
    data = json.loads(Path(path).read_text())
    records = data["annotations"] if isinstance(data, dict) else data
    grouped = defaultdict(list)
    for record in records:
        grouped[record["image_id"]].append(record)
    return data, grouped


def render_overlay(coarse_path: Path, refined_path: Path, image_dir: Path, max_images: int = 8) -> np.ndarray:
    """uint8 RGB picture, one row per image (at most ``max_images``): coarse left, refined right."""
    coarse_data, coarse = _records_by_image(coarse_path)
    _, refined = _records_by_image(refined_path)
    rows = []
    for image_info in coarse_data["images"][:max_images]:
        image = load_image(Path(image_dir) / image_info["file_name"])
        height, width = image.shape[:2]

        def masks(records):
            stack = [segmentation_to_mask(r["segmentation"], height, width) for r in records]
            return np.stack(stack) if stack else np.zeros((0, height, width), bool)

        rows.append(coarse_vs_refined(image, masks(coarse[image_info["id"]]), masks(refined[image_info["id"]])))
    return stack_rows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Coarse (red) vs refined (green) outlines, one row per image.")
    parser.add_argument("--coarse", type=Path, required=True, help="COCO annotation file with the coarse masks")
    parser.add_argument("--refined", type=Path, required=True, help="the refined file (same images)")
    parser.add_argument("--images", type=Path, required=True, help="image directory")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--max-images", type=int, default=8)
    args = parser.parse_args(argv)
    picture = render_overlay(args.coarse, args.refined, args.images, args.max_images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), picture[:, :, ::-1])
    print(f"wrote {args.out} (coarse outlines red, refined green)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
