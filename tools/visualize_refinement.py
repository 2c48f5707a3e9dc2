"""Draw coarse (red) vs refined (green) mask outlines of COCO files into one PNG.

    python tools/visualize_refinement.py --coarse COARSE.json --refined REFINED.json --images DIR --out overlay.png

--coarse is a COCO annotation file (it names the images); --refined is the refined file (an annotation file
or a result list). Images of --coarse that --refined does not cover (a run with --limit, other image ids)
are left out and counted in a warning; none in common is an error.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np

from refine_hooks import cli
from refine_hooks.data.annotations import load_json
from refine_hooks.data.images import ImageReadError, load_image
from refine_hooks.data.masks import segmentation_to_mask
from refine_hooks.visualize import coarse_vs_refined, stack_rows


def _records(data: Any, flag: str, path: Path) -> List[Dict[str, Any]]:
    records = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) and "image_id" in r for r in records):
        cli.fail(f"{flag} {path}: neither a COCO annotation file nor a result list of records with 'image_id'")
    return records


def _by_image(records: List[Dict[str, Any]]) -> Dict[Any, List[Dict[str, Any]]]:
    grouped = defaultdict(list)
    for record in records:
        grouped[record["image_id"]].append(record)
    return grouped


def select_images(coarse_path: Path, refined_path: Path, max_images: int) -> Tuple[List[Dict[str, Any]], Dict, Dict, List[str]]:
    """The first ``max_images`` images of the coarse file that the refined file covers, both files'
    records by image id, and warnings (images left out, images whose mask counts differ).

    An image is covered when it is in the refined file's ``images`` (annotation file) or has records in it
    (result list)."""
    coarse_data = load_json(coarse_path)
    if not isinstance(coarse_data, dict) or not isinstance(coarse_data.get("images"), list):
        kind = "a result list" if isinstance(coarse_data, list) else "not a COCO annotation file"
        cli.fail(f"--coarse {coarse_path}: {kind}; --coarse must be a COCO annotation file, which names the images")
    coarse = _by_image(_records(coarse_data, "--coarse", coarse_path))
    refined_data = load_json(refined_path)
    refined = _by_image(_records(refined_data, "--refined", refined_path))
    if isinstance(refined_data, dict) and isinstance(refined_data.get("images"), list):
        covered = {image.get("id") for image in refined_data["images"] if isinstance(image, dict)}
    else:
        covered = set(refined)
    images = [image for image in coarse_data["images"] if image.get("id") in covered]
    if not images:
        cli.fail(f"--refined {refined_path} covers none of the {len(coarse_data['images'])} images of --coarse "
                 f"{coarse_path} (other image ids?)")
    warnings = []
    left_out = len(coarse_data["images"]) - len(images)
    if left_out:
        warnings.append(f"{left_out} of the {len(coarse_data['images'])} images of --coarse {coarse_path} are not in "
                        f"--refined {refined_path} (made with --limit, or other image ids?): they are not drawn")
    differ = [image["id"] for image in images if len(coarse[image["id"]]) != len(refined[image["id"]])]
    if differ:
        warnings.append(f"{len(differ)} images have another number of masks in --refined than in --coarse "
                        f"(e.g. image ids {differ[:5]})")
    return images[:max_images], coarse, refined, warnings


def _masks(records: List[Dict[str, Any]], height: int, width: int, flag: str, image_name: str) -> np.ndarray:
    stack = []
    for record in records:
        try:
            stack.append(segmentation_to_mask(record.get("segmentation"), height, width))
        except Exception as error:  # noqa: BLE001 - any undecodable segmentation gets the same message
            cli.fail(f"{flag}: record {record.get('id', '')} of image {image_name} has a segmentation that cannot be "
                     f"decoded at {height}x{width}: {error}")
    return np.stack(stack) if stack else np.zeros((0, height, width), bool)


def render_overlay(images: List[Dict[str, Any]], coarse: Dict, refined: Dict, image_dir: Path) -> np.ndarray:
    """uint8 RGB picture, one row per image entry: coarse outlines left, refined right."""
    rows = []
    for image_info in images:
        image = load_image(Path(image_dir) / image_info["file_name"])
        height, width = image.shape[:2]
        name = image_info["file_name"]
        rows.append(coarse_vs_refined(image, _masks(coarse[image_info["id"]], height, width, "--coarse", name),
                                      _masks(refined[image_info["id"]], height, width, "--refined", name)))
    return stack_rows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coarse", type=Path, required=True, help="COCO annotation file with the coarse masks")
    parser.add_argument("--refined", type=Path, required=True, help="the refined file (same images)")
    parser.add_argument("--images", type=Path, required=True, help="image directory")
    parser.add_argument("--out", type=Path, required=True, help="picture to write (.png, .jpg, ...)")
    parser.add_argument("--max-images", type=cli.positive_int, default=8, help="rows at most (default 8)")
    args = parser.parse_args(argv)
    inputs = {"--coarse": args.coarse, "--refined": args.refined}
    cli.require_files(inputs)
    cli.require_directory("--images", args.images)
    cli.check_output_path("--out", args.out)
    if not cv2.haveImageWriter(str(args.out)):
        cli.fail(f"--out {args.out}: OpenCV cannot write a picture with this name's extension; use .png or .jpg")
    images, coarse, refined, warnings = select_images(args.coarse, args.refined, args.max_images)
    image_paths = [args.images / image["file_name"] for image in images]
    cli.refuse_overwriting_inputs({"--out": args.out}, {**inputs, "an image of --coarse": image_paths})
    cli.require_files({"an image of --coarse": image_paths})
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    picture = render_overlay(images, coarse, refined, args.images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), picture[:, :, ::-1]):
        cli.fail(f"--out {args.out}: OpenCV could not write the picture")
    print(f"wrote {args.out} ({len(images)} images; coarse outlines red, refined green)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, errors=(ValueError, ImageReadError)))
