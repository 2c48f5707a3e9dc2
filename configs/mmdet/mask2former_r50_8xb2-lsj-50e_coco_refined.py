# Mask2Former R50 instance segmentation (mmdet's stock config) with SAM refinement of its masks.
_base_ = 'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py'

custom_imports = dict(imports=['refine_hooks.mmdet'], allow_failed_imports=False)
custom_hooks = [dict(type='MaskRefinementHook', refiner=dict(type='SAMRefiner', model_type='vit_h'))]
