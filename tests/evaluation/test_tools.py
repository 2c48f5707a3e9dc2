"""tools/evaluate.py and the evaluation benchmark, run as users run them."""

from __future__ import annotations

import copy
import json
import runpy
import sys

import pytest

from refine_hooks.benchmarks import evaluation as benchmark
from refine_hooks.evaluation import evaluate_coco, evaluate_lvis

from evaluation_helpers import make_lvis


def run_tool(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("tools/evaluate.py", run_name="__main__")
    return exit_info.value.code


def test_compare_prints_both_and_writes_deltas(tmp_path, monkeypatch, capsys, synthetic_coco):
    gt, coarse = copy.deepcopy(synthetic_coco)
    refined = [r for r in coarse if r["score"] > 0.5]  # a different prediction set
    paths = {name: tmp_path / f"{name}.json" for name in ("gt", "coarse", "refined")}
    for name, data in (("gt", gt), ("coarse", coarse), ("refined", refined)):
        paths[name].write_text(json.dumps(data))
    out = tmp_path / "summary.json"
    code = run_tool(monkeypatch, "--gt", str(paths["gt"]), "--dt", str(paths["coarse"]), "--compare",
                    str(paths["refined"]), "--workers", "2", "--out", str(out), "--no-progress")
    assert code == 0
    printed = capsys.readouterr().out
    assert "Boundary AP (boundary)" in printed and "coarse.json vs refined.json" in printed
    assert "mask area" in printed
    summary = json.loads(out.read_text())
    first = summary["predictions"][str(paths["coarse"])]["metrics"]
    second = summary["predictions"][str(paths["refined"])]["metrics"]
    assert first == dict(evaluate_coco(copy.deepcopy(gt), coarse, progress=False))
    assert second == dict(evaluate_coco(copy.deepcopy(gt), refined, progress=False))
    assert summary["delta"]["boundary/AP"] == pytest.approx(second["boundary/AP"] - first["boundary/AP"])
    assert summary["settings"]["max_dets"] == 100


def test_lvis_flag_and_bad_input(tmp_path, monkeypatch, capsys, synthetic_coco):
    gt, results = copy.deepcopy(synthetic_coco)
    lvis = make_lvis(gt)
    gt_path, dt_path = tmp_path / "lvis.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(lvis))
    dt_path.write_text(json.dumps(results))
    assert run_tool(monkeypatch, "--gt", str(gt_path), "--dt", str(dt_path), "--lvis", "--iou-type", "segm",
                    "--no-progress") == 0
    summary = json.loads((tmp_path / "dt.eval.json").read_text())
    assert summary["settings"]["max_dets"] == 300
    assert summary["predictions"][str(dt_path)]["metrics"] == dict(evaluate_lvis(lvis, results, ["segm"], progress=False))
    results[0]["category_id"] = 4242
    dt_path.write_text(json.dumps(results))
    assert run_tool(monkeypatch, "--gt", str(gt_path), "--dt", str(dt_path), "--lvis", "--no-progress") == 2
    assert "4242" in capsys.readouterr().err
    # the LVIS file without --lvis: said so, before any prediction is read
    assert run_tool(monkeypatch, "--gt", str(gt_path), "--dt", str(dt_path), "--no-progress") == 2
    assert "--lvis" in capsys.readouterr().err


def test_benchmark_reports_both_timings(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = benchmark.main(["--images", "6", "--dets", "20", "--height", "60", "--width", "80", "--workers", "1",
                           "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == (0 if report["ratio"] <= 2.0 else 1)
    assert report["detections"] == 6 * 20 and report["segm_s"] > 0 and report["boundary_s"] > 0
    assert report["metrics"]["boundary/AP"] <= report["metrics"]["segm/AP"]
