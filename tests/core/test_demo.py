"""`make demo` end to end with a tiny random SAM: valid refined COCO json, overlay PNG, metrics."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from pycocotools.coco import COCO

from refine_hooks.sam import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_with_tiny_checkpoint(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny_sam.pth")
    out = tmp_path / "demo"
    # -o: use this interpreter's environment as it is instead of (re)creating .venv.
    command = ["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", "demo", f"PY={sys.executable}",
               f"CHECKPOINT={checkpoint}", "MODEL=tiny", f"OUT={out}"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    coarse = json.loads((ROOT / "tools/demo_data/coarse.json").read_text())
    refined = COCO(str(out / "refined.json"))  # loads and indexes: a valid COCO annotation file
    assert sorted(refined.getAnnIds()) == sorted(a["id"] for a in coarse["annotations"])
    for ann in refined.loadAnns(refined.getAnnIds()):
        mask = refined.annToMask(ann).astype(bool)
        assert ann["area"] == int(mask.sum())
    overlay = cv2.imread(str(out / "overlay.png"))
    image = coarse["images"][0]
    assert overlay is not None and overlay.shape[1] == 2 * image["width"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics  # the evaluation wrote its summary
