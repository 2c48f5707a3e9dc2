"""The pseudo-label job with a trained refiner (``--refiner phoenix --refiner-checkpoint``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from refine_hooks.data.images import load_image
from refine_hooks.data.masks import segmentation_to_mask
from refine_hooks.jobs import JobOptions, RefinerUnavailableError, refine_annotation_file
from refine_hooks.jobs.worker import INFO_KEY
from refine_hooks.refiners import build_refiner
from tiny_refiner import train_tiny_refiner, with_task_prompt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def refiner_checkpoint(tmp_path_factory):
    return train_tiny_refiner(str(tmp_path_factory.mktemp("phoenix")))


@pytest.mark.parametrize("task", [None, "salient_object"])
def test_job_refines_with_the_checkpoint_as_the_refiner_does(coco_dataset, tiny_checkpoint, refiner_checkpoint, tmp_path, task):
    out = str(tmp_path / "refined.json")
    kwargs = {"refiner_checkpoint": refiner_checkpoint, "iterations": 2}
    if task is not None:  # SUM's task prompt (--task): a checkpoint with one, and the row the job is told
        kwargs = dict(kwargs, refiner_checkpoint=with_task_prompt(refiner_checkpoint, str(tmp_path / "task.pth")), task=task)
    options = JobOptions(refiner="phoenix", refiner_kwargs=kwargs,
                         model_type="tiny", checkpoint=tiny_checkpoint, workers=0, chunk_size=2, progress=False)
    summary = refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out, options)
    assert summary.complete
    with open(out) as handle:
        result = json.load(handle)
    source = coco_dataset["data"]
    assert len(result["annotations"]) == len(source["annotations"])
    refiner = build_refiner(dict(type="Phoenix", model_type="tiny", checkpoint=tiny_checkpoint, **kwargs))
    assert refiner.task == task
    image = source["images"][0]
    records = [a for a in result["annotations"] if a["image_id"] == image["id"] and a[INFO_KEY]["status"] == "refined"]
    coarse = [a for a in source["annotations"] if a["id"] in {r["id"] for r in records}]
    assert records
    masks = np.stack([segmentation_to_mask(a["segmentation"], image["height"], image["width"]) for a in coarse])
    expected = refiner.refine(load_image(os.path.join(coco_dataset["images"], image["file_name"])), masks)
    for slot, record in enumerate(records):
        np.testing.assert_array_equal(segmentation_to_mask(record["segmentation"], image["height"], image["width"]),
                                      expected.masks[slot])


def test_missing_or_wrong_checkpoint_stops_before_any_work(coco_dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "refined.json")
    with pytest.raises(RefinerUnavailableError, match="--refiner-checkpoint"):
        refine_annotation_file(coco_dataset["ann"], coco_dataset["images"], out,
                               JobOptions(refiner="phoenix", model_type="tiny", checkpoint=tiny_checkpoint, progress=False))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools", "refine_pseudo_labels.py"), coco_dataset["ann"],
                          "--images", coco_dataset["images"], "--out", out, "--model-type", "tiny", "--checkpoint",
                          tiny_checkpoint, "--refiner", "phoenix", "--refiner-checkpoint", str(bad), "--no-progress"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode == 2 and str(bad) in run.stderr and "Traceback" not in run.stderr
    assert not os.path.exists(out) and not os.path.exists(out + ".work")
