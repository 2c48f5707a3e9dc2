"""Every tool in tools/ with every kind of bad input a user can give it: exit status 2, one ``error:`` line
that names the offending file or value, no traceback, and every file in the user's directory unchanged
(no output, no ``OUT.work/`` left behind).

The tools run in this process (``runpy``, as ``python tools/X.py`` runs them, ``sys.exit`` included), so
that the table stays fast; ``test_tools_run_as_subprocesses`` runs a few rows as real processes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import List, Tuple

import pytest
import torch

from tool_runner import REPO, assert_refused, copy_user_dir, run_tool, snapshot

MMDET_CONFIG = os.path.join(REPO, "configs", "mmdet", "mask-rcnn_r50_fpn_1x_coco_refined.py")
# A CUDA device this machine does not have: "cuda" without CUDA, else an index past the last GPU.
NO_SUCH_CUDA = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
HAS_MMDET = importlib.util.find_spec("mmdet") is not None and importlib.util.find_spec("mmengine") is not None
HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

JOB = "refine_pseudo_labels.py"
EVAL = "evaluate.py"
LVIS = "prepare_cocofied_lvis.py"
TRAIN = "train_iou_adaption.py"
VIS = "visualize_refinement.py"
MMDET = "mmdet_test.py"
REFINER = "train_refiner.py"
D2 = "detectron2_test.py"

_JOB_BASE = ["--images", "{d}/images", "--model-type", "tiny", "--checkpoint", "{d}/tiny.pth", "--device", "cpu",
             "--workers", "0", "--no-progress"]
_TRAIN_BASE = ["--images", "{d}/images", "--model-type", "tiny", "--checkpoint", "{d}/tiny.pth", "--device", "cpu",
               "--no-progress"]
_VIS_BASE = ["--images", "{d}/images"]
_D2_BASE = ["--config-file", "model_zoo:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
            "--refiner-config", os.path.join(REPO, "configs", "detectron2", "samrefiner.yaml"), "--num-gpus", "0"]
_REFINER_BASE = ["--model-type", "tiny", "--checkpoint", "{d}/tiny.pth", "--device", "cpu", "--workers", "0",
                 "--no-progress", "--iterations", "1"]

# (row id, tool, arguments with {d} for the user's directory, what the error line must name)
CASES: List[Tuple[str, str, List[str], str]] = [
    # --- an output that names an input
    ("evaluate-out-is-gt", EVAL, ["--gt", "{d}/gt.json", "--dt", "{d}/coarse.json", "--out", "{d}/gt.json"], "gt.json"),
    ("evaluate-out-links-to-gt", EVAL, ["--gt", "{d}/gt.json", "--dt", "{d}/coarse.json", "--out", "{d}/link_to_gt.json"],
     "through a link"),
    ("evaluate-out-is-dt", EVAL, ["--gt", "{d}/gt.json", "--dt", "{d}/coarse.json", "--out", "{d}/coarse.json"], "coarse.json"),
    ("cocofied-out-is-lvis", LVIS, ["--lvis", "{d}/lvis.json", "--out", "{d}/lvis.json"], "lvis.json"),
    ("cocofied-out-hard-link", LVIS, ["--lvis", "{d}/lvis.json", "--out", "{d}/hardlink_to_lvis.json"], "through a link"),
    ("cocofied-out-is-coco", LVIS, ["--lvis", "{d}/lvis.json", "--coco", "{d}/gt.json", "--out", "{d}/gt.json"], "gt.json"),
    ("train-out-is-annotations", TRAIN, ["{d}/coarse.json", *_TRAIN_BASE, "--out", "{d}/coarse.json"], "coarse.json"),
    ("train-out-is-checkpoint", TRAIN, ["{d}/coarse.json", *_TRAIN_BASE, "--out", "{d}/tiny.pth"], "tiny.pth"),
    ("job-out-is-in", JOB, ["{d}/coarse.json", *_JOB_BASE, "--out", "{d}/coarse.json"], "coarse.json"),
    ("job-out-links-to-in", JOB, ["{d}/coarse.json", *_JOB_BASE, "--out", "{d}/link_to_coarse.json"], "through a link"),
    ("job-out-is-image-info", JOB, ["{d}/results.json", "--image-info", "{d}/gt.json", *_JOB_BASE, "--out", "{d}/gt.json"],
     "gt.json"),
    ("job-summary-is-in", JOB, ["{d}/coarse.summary.json", *_JOB_BASE, "--out", "{d}/coarse.json"], "coarse.summary.json"),
    ("job-pth-to-json", JOB, ["{d}/predictions.pth", "--image-info", "{d}/gt.json", *_JOB_BASE, "--out", "{d}/refined.json"],
     "refined.json"),
    ("job-json-to-pth", JOB, ["{d}/coarse.json", *_JOB_BASE, "--out", "{d}/refined.pth"], "refined.pth"),
    ("visualize-out-is-an-image", VIS, ["--coarse", "{d}/coarse.json", "--refined", "{d}/coarse.json", *_VIS_BASE,
                                        "--out", "{d}/images/scene_002.jpg"], "scene_002.jpg"),
    ("mmdet-out-is-checkpoint", MMDET, [MMDET_CONFIG, "{d}/det.pkl", "--out", "{d}/det.pkl"], "det.pkl"),
    # --- results that would be silently wrong
    ("train-no-optimiser-step", TRAIN, ["{d}/coarse.json", *_TRAIN_BASE, "--limit", "1", "--out", "{d}/adapter.pth"],
     "--accumulate"),
    ("train-all-masks-below-min-area", TRAIN, ["{d}/coarse.json", *_TRAIN_BASE, "--min-area", "100000000",
                                               "--out", "{d}/adapter.pth"], "no optimiser step"),
    ("evaluate-gt-without-annotations", EVAL, ["--gt", "{d}/gt_empty.json", "--dt", "{d}/coarse.json",
                                               "--out", "{d}/eval.json"], "gt_empty.json"),
    ("evaluate-gt-without-annotations-key", EVAL, ["--gt", "{d}/gt_without_annotations.json", "--dt", "{d}/coarse.json",
                                                   "--out", "{d}/eval.json"], "annotations"),
    ("visualize-refined-ids-shifted", VIS, ["--coarse", "{d}/coarse.json", "--refined", "{d}/refined_shifted.json",
                                            *_VIS_BASE, "--out", "{d}/overlay.png"], "refined_shifted.json"),
    # --- tracebacks before: device, checkpoints, model type, directories
    ("job-device-without-cuda", JOB, ["{d}/coarse.json", *_JOB_BASE, "--device", NO_SUCH_CUDA, "--out", "{d}/r.json"],
     NO_SUCH_CUDA),
    ("train-device-without-cuda", TRAIN, ["{d}/coarse.json", *_TRAIN_BASE, "--device", NO_SUCH_CUDA,
                                          "--out", "{d}/adapter.pth"], NO_SUCH_CUDA),
    ("job-garbage-checkpoint", JOB, ["{d}/coarse.json", *_JOB_BASE, "--checkpoint", "{d}/garbage.pth", "--out", "{d}/r.json"],
     "garbage.pth"),
    ("job-truncated-checkpoint", JOB, ["{d}/coarse.json", *_JOB_BASE, "--checkpoint", "{d}/truncated.pth",
                                       "--out", "{d}/r.json"], "truncated.pth"),
    ("job-checkpoint-of-another-model", JOB, ["{d}/coarse.json", *_JOB_BASE, "--model-type", "vit_b",
                                              "--checkpoint", "{d}/plain_state.pth", "--out", "{d}/r.json"],
     "plain_state.pth"),
    ("job-iou-adapter-not-an-adapter", JOB, ["{d}/coarse.json", *_JOB_BASE, "--iou-adapter", "{d}/tiny.pth",
                                             "--out", "{d}/r.json"], "tiny.pth"),
    ("job-unknown-model-type", JOB, ["{d}/coarse.json", *_JOB_BASE, "--model-type", "vit_x", "--out", "{d}/r.json"],
     "vit_x"),
    ("job-directory-as-in", JOB, ["{d}/images", *_JOB_BASE, "--out", "{d}/r.json"], "images"),
    ("job-missing-in", JOB, ["{d}/absent.json", *_JOB_BASE, "--out", "{d}/r.json"], "absent.json"),
    ("job-shard-out-of-range", JOB, ["{d}/coarse.json", *_JOB_BASE, "--shard", "4/4", "--out", "{d}/r.json"], "4/4"),
    ("job-missing-image", JOB, ["{d}/coarse_missing_image.json", *_JOB_BASE, "--out", "{d}/r.json"], "not_there.jpg"),
    ("job-non-positive-batch", JOB, ["{d}/coarse.json", *_JOB_BASE, "--max-masks-per-batch", "0", "--out", "{d}/r.json"],
     "--max-masks-per-batch"),
    ("train-directory-as-annotations", TRAIN, ["{d}/a_dir", *_TRAIN_BASE, "--out", "{d}/adapter.pth"], "a_dir"),
    # --- evaluate.py
    ("evaluate-lvis-gt-without-lvis-flag", EVAL, ["--gt", "{d}/lvis.json", "--dt", "{d}/coarse.json",
                                                  "--out", "{d}/eval.json"], "--lvis"),
    ("evaluate-gt-without-iscrowd", EVAL, ["--gt", "{d}/gt_no_iscrowd.json", "--dt", "{d}/coarse.json",
                                           "--out", "{d}/eval.json"], "iscrowd"),
    ("evaluate-result-list-as-gt", EVAL, ["--gt", "{d}/results.json", "--dt", "{d}/coarse.json", "--out", "{d}/eval.json"],
     "results.json"),
    ("evaluate-bad-json-gt", EVAL, ["--gt", "{d}/bad.json", "--dt", "{d}/coarse.json", "--out", "{d}/eval.json"],
     "bad.json"),
    ("evaluate-bad-json-dt", EVAL, ["--gt", "{d}/gt.json", "--dt", "{d}/bad.json", "--out", "{d}/eval.json"], "bad.json"),
    ("evaluate-null-score-in-dt", EVAL, ["--gt", "{d}/gt.json", "--dt", "{d}/results_null_score.json",
                                         "--out", "{d}/eval.json"], "result #2"),
    ("evaluate-negative-dilation-ratio", EVAL, ["--gt", "{d}/gt.json", "--dt", "{d}/coarse.json", "--dilation-ratio", "-1",
                                                "--out", "{d}/eval.json"], "--dilation-ratio"),
    ("evaluate-out-not-json", EVAL, ["--gt", "{d}/gt.json", "--dt", "{d}/coarse.json", "--out", "{d}/eval.pkl"],
     "eval.pkl"),
    # --- prepare_cocofied_lvis.py
    ("cocofied-no-categories", LVIS, ["--lvis", "{d}/lvis_no_categories.json", "--out", "{d}/c.json"], "categories"),
    ("cocofied-no-category-id", LVIS, ["--lvis", "{d}/lvis_no_category_id.json", "--out", "{d}/c.json"], "category_id"),
    ("cocofied-bad-json", LVIS, ["--lvis", "{d}/bad.json", "--out", "{d}/c.json"], "bad.json"),
    ("cocofied-unwritable-out", LVIS, ["--lvis", "{d}/lvis.json", "--out", "{d}/a_file/c.json"], "a_file"),
    # --- train_iou_adaption.py
    ("train-result-list-without-image-info", TRAIN, ["{d}/results.json", *_TRAIN_BASE, "--out", "{d}/adapter.pth"],
     "--image-info"),
    # the images are checked before the model is built: the (garbage) checkpoint is never read
    ("train-missing-image-before-model", TRAIN, ["{d}/coarse_missing_image.json", *_TRAIN_BASE, "--checkpoint",
                                                 "{d}/garbage.pth", "--out", "{d}/adapter.pth"], "not_there.jpg"),
    ("train-accumulate-0", TRAIN, ["{d}/coarse.json", *_TRAIN_BASE, "--accumulate", "0", "--out", "{d}/adapter.pth"],
     "--accumulate"),
    ("train-epochs-0", TRAIN, ["{d}/coarse.json", *_TRAIN_BASE, "--epochs", "0", "--out", "{d}/adapter.pth"], "--epochs"),
    # --- visualize_refinement.py
    ("visualize-missing-image", VIS, ["--coarse", "{d}/coarse_missing_image.json", "--refined", "{d}/coarse.json",
                                      *_VIS_BASE, "--out", "{d}/overlay.png"], "not_there.jpg"),
    ("visualize-result-list-as-coarse", VIS, ["--coarse", "{d}/results.json", "--refined", "{d}/coarse.json",
                                              *_VIS_BASE, "--out", "{d}/overlay.png"], "results.json"),
    ("visualize-max-images-0", VIS, ["--coarse", "{d}/coarse.json", "--refined", "{d}/coarse.json", *_VIS_BASE,
                                     "--max-images", "0", "--out", "{d}/overlay.png"], "--max-images"),
    ("visualize-missing-refined", VIS, ["--coarse", "{d}/coarse.json", "--refined", "{d}/absent.json", *_VIS_BASE,
                                        "--out", "{d}/overlay.png"], "absent.json"),
    ("visualize-out-without-image-extension", VIS, ["--coarse", "{d}/coarse.json", "--refined", "{d}/coarse.json",
                                                    *_VIS_BASE, "--out", "{d}/overlay"], "overlay"),
    # --- train_refiner.py: data is checked before the model is built (a garbage checkpoint is never read)
    ("refiner-out-is-checkpoint", REFINER, ["--coco", "{d}/coarse.json", "{d}/images", *_REFINER_BASE,
                                            "--out", "{d}/tiny.pth"], "tiny.pth"),
    ("refiner-out-not-pth", REFINER, ["--coco", "{d}/coarse.json", "{d}/images", *_REFINER_BASE, "--out", "{d}/r.json"],
     "r.json"),
    ("refiner-no-data", REFINER, [*_REFINER_BASE, "--out", "{d}/r.pth"], "--coco"),
    ("refiner-missing-annotations", REFINER, ["--coco", "{d}/absent.json", "{d}/images", *_REFINER_BASE,
                                              "--out", "{d}/r.pth"], "absent.json"),
    ("refiner-missing-image-before-model", REFINER, ["--coco", "{d}/coarse_missing_image.json", "{d}/images",
                                                     *_REFINER_BASE, "--checkpoint", "{d}/garbage.pth",
                                                     "--out", "{d}/r.pth"], "not_there.jpg"),
    ("refiner-garbage-checkpoint", REFINER, ["--coco", "{d}/coarse.json", "{d}/images", *_REFINER_BASE, "--checkpoint",
                                             "{d}/garbage.pth", "--out", "{d}/r.pth"], "garbage.pth"),
    ("refiner-device-without-cuda", REFINER, ["--coco", "{d}/coarse.json", "{d}/images", *_REFINER_BASE, "--device",
                                              NO_SUCH_CUDA, "--out", "{d}/r.pth"], NO_SUCH_CUDA),
    ("refiner-iterations-0", REFINER, ["--coco", "{d}/coarse.json", "{d}/images", *_REFINER_BASE, "--iterations", "0",
                                       "--out", "{d}/r.pth"], "--iterations"),
    ("refiner-target-uncertainty-missing-file", REFINER, ["--unlabeled", "{d}/images", *_REFINER_BASE, "--target-uncertainty",
                                                          "{d}/absent_refiner.json", "--out", "{d}/r.pth"],
     "absent_refiner.json"),
    ("refiner-target-uncertainty-bad-json-file", REFINER, ["--unlabeled", "{d}/images", *_REFINER_BASE, "--target-uncertainty",
                                                           "{d}/bad.json", "--out", "{d}/r.pth"], "bad.json"),
    ("refiner-target-uncertainty-bad-json", REFINER, ["--unlabeled", "{d}/images", *_REFINER_BASE, "--target-uncertainty",
                                                      '{"type": "SAMRefiner",', "--out", "{d}/r.pth"], "not valid JSON"),
    ("refiner-target-uncertainty-unknown-type", REFINER, ["--unlabeled", "{d}/images", *_REFINER_BASE, "--target-uncertainty",
                                                          '{"type": "NoSuchRefiner"}', "--out", "{d}/r.pth"], "NoSuchRefiner"),
    ("refiner-target-uncertainty-unknown-option", REFINER, ["--unlabeled", "{d}/images", *_REFINER_BASE,
                                                            "--target-uncertainty", '{"type": "SAMRefiner", "no_such": 1}',
                                                            "--out", "{d}/r.pth"], "no_such"),
    ("refiner-target-uncertainty-garbage-phoenix", REFINER, ["--unlabeled", "{d}/images", *_REFINER_BASE,
                                                             "--target-uncertainty",
                                                             '{"type": "Phoenix", "refiner_checkpoint": "{d}/garbage.pth"}',
                                                             "--out", "{d}/r.pth"], "garbage.pth"),
    ("refiner-target-uncertainty-without-unlabeled", REFINER, ["--coco", "{d}/coarse.json", "{d}/images", *_REFINER_BASE,
                                                               "--target-uncertainty", '{"type": "SAMRefiner"}',
                                                               "--out", "{d}/r.pth"], "--unlabeled"),
    ("job-task-without-phoenix", JOB, ["{d}/coarse.json", *_JOB_BASE, "--task", "entity", "--out", "{d}/r.json"], "--task"),
    ("job-phoenix-without-refiner-checkpoint", JOB, ["{d}/coarse.json", *_JOB_BASE, "--refiner", "phoenix",
                                                     "--out", "{d}/r.json"], "--refiner-checkpoint"),
    ("job-phoenix-garbage-refiner-checkpoint", JOB, ["{d}/coarse.json", *_JOB_BASE, "--refiner", "phoenix",
                                                     "--refiner-checkpoint", "{d}/garbage.pth", "--out", "{d}/r.json"],
     "garbage.pth"),
    # --- mmdet_test.py: the checkpoint is checked before any runner is built
    ("mmdet-missing-checkpoint", MMDET, [MMDET_CONFIG, "{d}/missing.pth"], "missing.pth"),
    ("mmdet-out-not-pkl", MMDET, [MMDET_CONFIG, "{d}/det.pkl", "--out", "{d}/preds.json"], "preds.json"),
    ("mmdet-garbage-checkpoint", MMDET, [MMDET_CONFIG, "{d}/garbage.pth"], "garbage.pth"),
    ("mmdet-truncated-checkpoint", MMDET, [MMDET_CONFIG, "{d}/truncated.pth"], "truncated.pth"),
    # --- detectron2_test.py: the command line and the config are checked before any model is built
    ("d2-missing-config", D2, ["--config-file", "{d}/absent.yaml"], "absent.yaml"),
    ("d2-missing-refiner-config", D2, [*_D2_BASE, "--refiner-config", "{d}/absent_overlay.yaml"], "absent_overlay.yaml"),
    ("d2-register-missing-json", D2, [*_D2_BASE, "--register", "user_set", "{d}/absent.json", "{d}/images"], "absent.json"),
    ("d2-register-image-root-not-a-directory", D2, [*_D2_BASE, "--register", "user_set", "{d}/gt.json", "{d}/gt.json"],
     "not a directory"),
    ("d2-register-a-builtin-name", D2, [*_D2_BASE, "--register", "coco_2017_val", "{d}/gt.json", "{d}/images"],
     "coco_2017_val"),
    ("d2-bad-add-config", D2, ["--add-config", "no_such_module:add_config", *_D2_BASE], "no_such_module"),
    ("d2-output-is-a-file", D2, [*_D2_BASE, "--output", "{d}/gt.json"], "gt.json"),
    ("d2-workers-0", D2, [*_D2_BASE, "--workers", "0"], "--workers"),
    ("d2-unknown-config-key", D2, [*_D2_BASE, "MODEL.NO_SUCH_KEY", "1"], "NO_SUCH_KEY"),
    ("d2-missing-weights", D2, [*_D2_BASE, "MODEL.WEIGHTS", "{d}/absent_weights.pkl"], "absent_weights.pkl"),
    ("d2-empty-weights", D2, [*_D2_BASE, "MODEL.WEIGHTS", ""], "random weights"),
    ("d2-garbage-weights", D2, [*_D2_BASE, "MODEL.WEIGHTS", "{d}/garbage.pth"], "garbage.pth"),
    ("d2-truncated-weights", D2, [*_D2_BASE, "MODEL.WEIGHTS", "{d}/truncated.pth"], "truncated.pth"),
    ("d2-unregistered-test-set", D2, [*_D2_BASE, "MODEL.WEIGHTS", "{d}/det.pkl", "DATASETS.TEST", "('no_such_set',)"],
     "no_such_set"),
]


@pytest.mark.parametrize("row,tool,args,named", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(row, tool, args, named, template, tmp_path,
                                                               monkeypatch, capsys):
    if tool == MMDET and not HAS_MMDET:
        pytest.skip("mmdet / mmengine not installed")
    if tool == D2 and not HAS_DETECTRON2:
        pytest.skip("Detectron2 not installed")
    user_dir = copy_user_dir(template, tmp_path)
    before = snapshot(user_dir)
    monkeypatch.chdir(user_dir)  # anything written to the working directory would show in the snapshot
    code, _, err = run_tool(tool, [a.replace("{d}", user_dir) for a in args], monkeypatch, capsys)
    assert_refused(code, err, named)
    assert snapshot(user_dir) == before


@pytest.mark.parametrize("row", ["evaluate-out-links-to-gt", "job-device-without-cuda", "train-no-optimiser-step"])
def test_tools_run_as_subprocesses(row, template, tmp_path):
    """The same refusals from real processes (the ``__main__`` path, nothing configured by pytest)."""
    _, tool, args, named = next(case for case in CASES if case[0] == row)
    user_dir = copy_user_dir(template, tmp_path)
    before = snapshot(user_dir)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *[a.replace("{d}", user_dir) for a in args]],
                          capture_output=True, text=True, timeout=300, cwd=user_dir, env=env)
    assert_refused(done.returncode, done.stderr, named)
    assert snapshot(user_dir) == before


def test_detectron2_weights_that_cannot_be_downloaded_stop_before_any_model(template, tmp_path, monkeypatch, capsys):
    """Remote weights are fetched once, before any process or model; a failed download is exit status 3
    (the input may be fine, the machine cannot get it) with the URL in the one error line."""
    if not HAS_DETECTRON2:
        pytest.skip("Detectron2 not installed")
    user_dir = copy_user_dir(template, tmp_path)
    before = snapshot(user_dir)
    monkeypatch.chdir(user_dir)
    url = "https://127.0.0.1:9/refine_hooks_absent_weights.pkl"  # nothing listens on the discard port
    code, _, err = run_tool(D2, [*_D2_BASE, "MODEL.WEIGHTS", url], monkeypatch, capsys)
    assert "Traceback" not in err and code == 3
    assert [line for line in err.splitlines() if "error: " in line] == [
        next(line for line in err.splitlines() if line.startswith("error: MODEL.WEIGHTS " + url + ": cannot download"))]
    assert snapshot(user_dir) == before
