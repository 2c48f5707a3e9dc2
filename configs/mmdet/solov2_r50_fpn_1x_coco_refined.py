# SOLOv2 R50-FPN (mmdet's stock config) with SAM refinement of its masks at validation and test.
_base_ = 'mmdet::solov2/solov2_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['refine_hooks.mmdet'], allow_failed_imports=False)
custom_hooks = [dict(type='MaskRefinementHook', refiner=dict(type='SAMRefiner', model_type='vit_h'))]
