# Mask R-CNN R50-FPN trained on LVIS v1 (mmdet's stock config), refined masks, evaluated with LVIS mask AP
# and Boundary AP (APr/APc/APf included) under lvis/segm_* and lvis/boundary_*.
_base_ = 'mmdet::lvis/mask-rcnn_r50_fpn_sample1e-3_ms-1x_lvis-v1.py'

custom_imports = dict(imports=['refine_hooks.mmdet'], allow_failed_imports=False)
custom_hooks = [dict(type='MaskRefinementHook', refiner=dict(type='SAMRefiner', model_type='vit_h'))]

val_evaluator = dict(
    _delete_=True, type='LVISBoundaryMetric', ann_file='data/lvis_v1/annotations/lvis_v1_val.json')
test_evaluator = val_evaluator
