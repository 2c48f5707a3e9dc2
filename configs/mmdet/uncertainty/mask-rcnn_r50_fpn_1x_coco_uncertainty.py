# Next self-training round of Mask R-CNN R50-FPN (mmdet's stock config) on refined pseudo-labels and their
# uncertainty sidecar (tools/refine_pseudo_labels.py --uncertainty): the mask loss weights every 28x28 target
# pixel by its certainty c = 1 - u, RoI-aligned exactly like the mask target (SUM eq. 1 with BCE).
# docs/uncertainty.md. Set train_dataloader.dataset.ann_file / data_prefix to the round's files.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['refine_hooks.mmdet'], allow_failed_imports=False)

model = dict(
    roi_head=dict(
        mask_head=dict(
            type='UncertaintyAwareFCNMaskHead',
            loss_mask=dict(type='UncertaintyAwareCrossEntropyLoss', use_mask=True, loss_weight=1.0))))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='LoadUncertainty'),  # the maps ride on gt_masks through the transforms below
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
train_dataloader = dict(
    dataset=dict(
        type='UncertaintyCocoDataset',  # sidecar: <ann_file without .json>.uncertainty.bin (or uncertainty_file=)
        ann_file='pseudo_labels/pseudo_refined.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
