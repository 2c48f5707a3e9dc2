# Noisy Boundaries semi-supervised COCO training (1% seed 1 @ 10% labeled) on SAM-refined pseudo-labels.
# Copy this file next to the authors' configs/noisyboundaries/coco/mask_rcnn_r50_fpn_1x_coco_pl.py
# (MMDetection 2.18 / mmcv-full 1.x). Only the pseudo-label file changes: the labeled 10% (repeated 19
# times, as in the authors' config) and everything else are inherited.
_base_ = './mask_rcnn_r50_fpn_1x_coco_pl.py'

data_root = 'data/coco/'
data = dict(
    train=dict(
        type='ConcatDataset',
        datasets=[
            dict(
                type='RepeatDataset',
                times=19,
                dataset=dict(
                    type='CocoDataset',
                    ann_file=data_root + 'annotations/instances_train2017.1@10.json',
                    img_prefix=data_root + 'images/train2017/',
                    pipeline={{_base_.train_pipeline}})),
            dict(
                type='CocoDataset',
                # written by tools/refine_pseudo_labels.py from the authors' labels/coco_1@10_pl.json
                ann_file='labels/coco_1@10_pl.samrefined.json',
                img_prefix=data_root + 'images/train2017/',
                pipeline={{_base_.train_pipeline}}),
        ]))
