"""Write the small demo dataset shipped in tools/demo_data/ (deterministic; rerun to regenerate).

Three textured 320x240 scenes with a few objects each. ``coarse.json`` is a COCO annotation file whose
masks are corrupted versions of the objects (shifted, eroded, dilated, polygon-simplified, with holes):
the kind of pseudo-labels a weak detector produces. ``ground_truth.json`` holds the true masks, so
`tools/evaluate.py` can score coarse and refined masks against it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from refine_hooks.data.masks import mask_to_xywh, rle_encode

CATEGORIES = [{"id": 1, "name": "disk"}, {"id": 2, "name": "box"}, {"id": 3, "name": "blob"}]


def _scene(rng: np.random.RandomState, height: int, width: int):
    background = rng.randint(40, 120, size=3)
    image = np.clip(background + rng.normal(0, 12, size=(height, width, 3)), 0, 255)
    objects = []
    for _ in range(rng.randint(3, 5)):
        mask = np.zeros((height, width), np.uint8)
        kind = rng.randint(1, 4)
        cx, cy = rng.randint(40, width - 40), rng.randint(40, height - 40)
        if kind == 1:
            cv2.ellipse(mask, (cx, cy), (rng.randint(15, 40), rng.randint(15, 40)), rng.randint(0, 180), 0, 360, 1, -1)
        elif kind == 2:
            w, h = rng.randint(25, 70), rng.randint(25, 70)
            cv2.rectangle(mask, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), 1, -1)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
            radii = rng.uniform(15, 40, 9)
            points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
            cv2.fillPoly(mask, [points], 1)
        color = rng.randint(120, 255, size=3)
        image[mask > 0] = np.clip(color + rng.normal(0, 10, size=(int(mask.sum()), 3)), 0, 255)
        objects.append((kind, mask.astype(bool)))
    # Later objects occlude earlier ones.
    visible = []
    for i, (kind, mask) in enumerate(objects):
        for _, later in objects[i + 1 :]:
            mask = mask & ~later
        if mask.sum() > 50:
            visible.append((kind, mask))
    return image.astype(np.uint8), visible


def _corrupt(rng: np.random.RandomState, mask: np.ndarray) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    coarse = mask.astype(np.uint8)
    choice = rng.randint(0, 4)
    if choice == 0:
        coarse = cv2.dilate(coarse, kernel, iterations=int(rng.randint(3, 7)))
    elif choice == 1:
        coarse = cv2.erode(coarse, kernel, iterations=int(rng.randint(2, 5)))
    elif choice == 2:
        contours, _ = cv2.findContours(coarse, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        coarse = np.zeros_like(coarse)
        for contour in contours:
            cv2.fillPoly(coarse, [cv2.approxPolyDP(contour, 6.0, True)], 1)
    else:
        ys, xs = np.nonzero(coarse)
        cv2.circle(coarse, (int(xs.mean()), int(ys.mean())), 5, 0, -1)
    shift = rng.randint(-4, 5, size=2)
    coarse = np.roll(coarse, tuple(shift), axis=(0, 1))
    return coarse.astype(bool)


def make_demo_data(out_dir: Path, num_images: int = 3, seed: int = 0, height: int = 240, width: int = 320) -> None:
    rng = np.random.RandomState(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, truth, coarse = [], [], []
    for image_id in range(1, num_images + 1):
        image, objects = _scene(rng, height, width)
        file_name = f"scene_{image_id:03d}.jpg"
        cv2.imwrite(str(out_dir / "images" / file_name), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for kind, mask in objects:
            ann_id = len(truth) + 1
            for records, m in ((truth, mask), (coarse, _corrupt(rng, mask))):
                records.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": int(kind),
                        "segmentation": rle_encode(m),
                        "area": int(m.sum()),
                        "bbox": mask_to_xywh(m),
                        "iscrowd": 0,
                        "score": 1.0,
                    }
                )
    for name, records in (("ground_truth.json", truth), ("coarse.json", coarse)):
        with open(out_dir / name, "w") as f:
            json.dump({"images": images, "annotations": records, "categories": CATEGORIES}, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "demo_data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_demo_data(args.out, seed=args.seed)
    print(f"wrote {args.out}")
