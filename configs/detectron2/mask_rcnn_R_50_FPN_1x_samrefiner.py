"""LazyConfig: the model zoo's Mask R-CNN R50-FPN 1x with SAMRefiner (ViT-H) after its mask head.

    python tools/detectron2_test.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_1x_samrefiner.py \
        train.init_checkpoint=/path/to/model_final.pkl
"""

from detectron2.model_zoo import get_config

from refine_hooks.detectron2 import with_refiner

_base = get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
dataloader = _base.dataloader
optimizer = _base.optimizer
lr_multiplier = _base.lr_multiplier
train = _base.train

model = with_refiner(_base.model, refiner=dict(type="SAMRefiner", model_type="vit_h"))
