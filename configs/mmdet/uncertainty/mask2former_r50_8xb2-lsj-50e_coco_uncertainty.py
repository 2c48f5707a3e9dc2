# Next self-training round of Mask2Former R50 instance segmentation (mmdet's stock config) on refined
# pseudo-labels and their uncertainty sidecar: the point-sampled mask loss weights every point by its
# certainty c = 1 - u, sampled at the same points (SUM eq. 1), and the Dice loss keeps the points with
# c > 0.6 (SUM eq. 2). docs/uncertainty.md. Set train_dataloader.dataset.ann_file / data_prefix.
_base_ = 'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py'

custom_imports = dict(imports=['refine_hooks.mmdet'], allow_failed_imports=False)

model = dict(
    panoptic_head=dict(
        type='UncertaintyAwareMask2FormerHead',
        # SUM's focal:Dice pair instead of Mask2Former's BCE:Dice:
        #   loss_mask=dict(type='UncertaintyAwareFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=20.0)
        loss_mask=dict(type='UncertaintyAwareCrossEntropyLoss', use_sigmoid=True, reduction='mean', loss_weight=5.0),
        loss_dice=dict(type='UncertaintyAwareDiceLoss', theta=0.6, use_sigmoid=True, activate=True, reduction='mean',
                       naive_dice=True, eps=1.0, loss_weight=5.0)))

train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True, backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='LoadUncertainty'),  # the maps ride on gt_masks through the transforms below
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale={{_base_.image_size}}, ratio_range=(0.1, 2.0), resize_type='Resize', keep_ratio=True),
    dict(type='RandomCrop', crop_size={{_base_.image_size}}, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='PackDetInputs')
]
train_dataloader = dict(
    dataset=dict(
        type='UncertaintyCocoDataset',
        ann_file='pseudo_labels/pseudo_refined.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
