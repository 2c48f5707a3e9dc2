"""MaskRefinementHook under DDP: two CPU ranks (gloo) give the metrics of one process."""

import json
import os
import socket
import subprocess
import sys

import pytest

from frameworks import import_framework

import_framework("mmdet")  # skips this module without mmdet, fails it when REFINE_HOOKS_REQUIRE names mmdet

import torch  # noqa: E402
from mmengine.runner import Runner, save_checkpoint  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import refine_hooks.mmdet  # noqa: E402,F401

from mmdet_test_utils import TINY_REFINER, runner_config  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_match_one_process(coco, tmp_path):
    root, ann = coco
    register_all_modules(init_default_scope=True)
    cfg = runner_config("mask-rcnn_r50_fpn_1x_coco_refined.py", "mask_rcnn", root, ann, str(tmp_path / "single"),
                        hook=dict(type="MaskRefinementHook", refiner=TINY_REFINER))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = str(tmp_path / "model.pth")
    save_checkpoint({"state_dict": model.state_dict()}, checkpoint)
    cfg.load_from = checkpoint
    # The ranks run with one intra-op thread each; CPU kernels can round differently with another
    # thread count, so the reference run uses one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Runner.from_cfg(cfg).test()
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "ranks"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
               os.path.join(HERE, "ddp_worker.py"), root, ann, checkpoint, str(tmp_path / "ddp"), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["model"] == "MMDistributedDataParallel" and rank["restored"]
        assert rank["stats"]["refined"] > 0  # each rank refined its own share
    assert sum(r["stats"]["images"] for r in ranks) >= 3  # 3 images (the sampler pads to 4)
    for key, value in single.items():
        assert ranks[0]["metrics"][key] == pytest.approx(value, abs=1e-9), key
