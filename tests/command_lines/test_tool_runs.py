"""Runs that succeed but must say something: a tiny checkpoint under another model type, a refined file
that covers only some images, LVIS annotations that name no image of the file, where summaries go."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import cv2

from refine_hooks.cli import CliError, checked_device, refuse_overwriting_inputs, same_file
from tool_runner import REPO, run_tool

import pytest


def test_tiny_checkpoint_under_another_model_type_is_logged_and_pth_summary_keeps_apart(template, tmp_path):
    """--model-type vit_b --checkpoint tiny.pth runs the tiny model and says so; a .pth output's summary
    does not take the name of a .json output's."""
    out = str(tmp_path / "refined.pth")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "refine_pseudo_labels.py"), os.path.join(template, "predictions.pth"),
         "--image-info", os.path.join(template, "gt.json"), "--images", os.path.join(template, "images"), "--out", out,
         "--model-type", "vit_b", "--checkpoint", os.path.join(template, "tiny.pth"), "--device", "cpu",
         "--iterations", "1", "--limit", "1", "--workers", "0", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    warning = [line for line in done.stderr.splitlines() if "tiny random SAM" in line]
    assert warning and "vit_b" in warning[0] and "tiny.pth" in warning[0], done.stderr
    assert os.path.isfile(out + ".summary.json") and f"summary: {out}.summary.json" in done.stdout
    assert not os.path.exists(str(tmp_path / "refined.summary.json"))


def test_visualize_draws_only_the_images_the_refined_file_covers_and_counts_the_rest(template, tmp_path, monkeypatch, capsys):
    with open(os.path.join(template, "coarse.json")) as handle:
        coarse = json.load(handle)
    first = coarse["images"][0]
    limited = dict(coarse, images=[first], annotations=[a for a in coarse["annotations"] if a["image_id"] == first["id"]])
    refined = tmp_path / "refined_limit1.json"
    refined.write_text(json.dumps(limited))
    out = tmp_path / "overlay.png"
    code, stdout, err = run_tool("visualize_refinement.py", ["--coarse", os.path.join(template, "coarse.json"),
                                                             "--refined", str(refined), "--images",
                                                             os.path.join(template, "images"), "--out", str(out)],
                                 monkeypatch, capsys)
    assert code == 0, err
    assert "warning: 2 of the 3 images of --coarse" in err and "not drawn" in err
    picture = cv2.imread(str(out))
    assert picture.shape[:2] == (first["height"], 2 * first["width"])  # one row, coarse | refined
    assert "(1 images;" in stdout

    # a refined result list without records for an image does not cover it either, and masks counted apart
    results = [{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")}
               for a in coarse["annotations"] if a["image_id"] != first["id"]][1:]
    refined.write_text(json.dumps(results))
    code, _, err = run_tool("visualize_refinement.py", ["--coarse", os.path.join(template, "coarse.json"),
                                                        "--refined", str(refined), "--images",
                                                        os.path.join(template, "images"), "--out", str(out)],
                            monkeypatch, capsys)
    assert code == 0, err
    assert "1 of the 3 images" in err and "1 images have another number of masks" in err


def test_cocofied_tool_counts_annotations_it_leaves_out(template, tmp_path, monkeypatch, capsys):
    with open(os.path.join(template, "lvis.json")) as handle:
        lvis = json.load(handle)
    lvis["annotations"].append(dict(lvis["annotations"][0], id=999, image_id=4242))  # an image the file lacks
    path = tmp_path / "lvis_orphan.json"
    path.write_text(json.dumps(lvis))
    out = tmp_path / "cocofied.json"
    code, stdout, err = run_tool("prepare_cocofied_lvis.py", ["--lvis", str(path), "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    assert "1 on image ids that are not in" in stdout and "warning: 1 annotations" in err
    info = json.loads(out.read_text())["info"]["cocofied"]
    assert info["dropped_unknown_images"] == 1
    assert info["annotations"] + info["dropped_unknown_images"] + info["dropped_other_images"] + \
        info["dropped_other_categories"] == info["lvis_annotations"]


def test_evaluate_default_summary_names_keep_predictions_apart():
    default = runpy.run_path(os.path.join(REPO, "tools", "evaluate.py"))["default_summary_path"]
    assert default("run/x.json") == "run/x.eval.json" and default("run/x.segm.json") == "run/x.segm.eval.json"
    assert default("run/x.pth") == "run/x.pth.eval.json" and default("run/x.pkl") == "run/x.pkl.eval.json"


def test_shared_checks(tmp_path):
    source = tmp_path / "in.json"
    source.write_text("{}")
    (tmp_path / "link.json").symlink_to(source)
    os.link(source, tmp_path / "hard.json")
    assert same_file(tmp_path / "link.json", source) and same_file(tmp_path / "hard.json", source)
    assert same_file(tmp_path / "sub" / ".." / "in.json", source) and not same_file(tmp_path / "new.json", source)
    with pytest.raises(CliError, match="--out .*hard.json is the same file as --gt .*in.json .through a link"):
        refuse_overwriting_inputs({"--out": tmp_path / "hard.json"}, {"--gt": source, "--dt": None})
    with pytest.raises(CliError, match="are the same file"):
        refuse_overwriting_inputs({"--out": tmp_path / "a.json", "--metrics-out": tmp_path / "a.json"}, {})
    refuse_overwriting_inputs({"--out": tmp_path / "new.json"}, {"--gt": source, "images": [source.parent / "x.jpg"]})
    assert checked_device("cpu") == "cpu" and checked_device(None) in ("cpu", "cuda")
    with pytest.raises(CliError, match="not a device name"):
        checked_device("gpu please")
