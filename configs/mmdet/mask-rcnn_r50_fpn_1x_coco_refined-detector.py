# The explicit form: Mask R-CNN R50-FPN (mmdet's stock config) wrapped in RefinedDetector. Checkpoints of the
# plain Mask R-CNN load unchanged (load_from=...); training is the plain detector's.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['refine_hooks.mmdet'], allow_failed_imports=False)
model = dict(
    _delete_=True,
    type='RefinedDetector',
    detector={{_base_.model}},
    refiner=dict(type='SAMRefiner', model_type='vit_h'))
