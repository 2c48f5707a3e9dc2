"""One rank of the DDP test (launched by torch.distributed.run from test_ddp.py): Mask R-CNN with
MaskRefinementHook under MMDistributedDataParallel on CPU (gloo); writes its metrics and hook counts."""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for tiny_coco

import torch  # noqa: E402

import refine_hooks.mmdet  # noqa: E402,F401
from mmengine.runner import Runner  # noqa: E402
from refine_hooks.mmdet import MaskRefinementHook  # noqa: E402

from mmdet_test_utils import TINY_REFINER, runner_config  # noqa: E402


def main(root, ann, checkpoint, work_dir, out_dir):
    cfg = runner_config("mask-rcnn_r50_fpn_1x_coco_refined.py", "mask_rcnn", root, ann, work_dir,
                        hook=dict(type="MaskRefinementHook", refiner=TINY_REFINER))
    cfg.load_from = checkpoint
    cfg.launcher = "pytorch"
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None)  # CPU modules
    # mmengine's pytorch launcher calls torch.cuda.set_device; on CPU join the group first (gloo) and
    # the Runner uses it as it is.
    torch.distributed.init_process_group(backend="gloo")
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    (hook,) = [h for h in runner.hooks if isinstance(h, MaskRefinementHook)]
    rank = int(os.environ["RANK"])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"metrics": metrics, "stats": dataclasses.asdict(hook.stats), "model": type(runner.model).__name__,
                   "restored": "test_step" not in runner.model.__dict__}, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
