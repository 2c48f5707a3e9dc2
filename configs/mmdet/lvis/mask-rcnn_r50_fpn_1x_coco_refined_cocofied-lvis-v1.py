# A COCO-trained Mask R-CNN with refined masks, evaluated on "cocofied" LVIS v1 val: LVIS's more precise
# masks restricted to the 80 COCO categories (the AP* protocol of PointRend and the refinement papers).
# Make the annotation file once:
#   python tools/prepare_cocofied_lvis.py --lvis data/lvis_v1/annotations/lvis_v1_val.json \
#       --coco data/coco/annotations/instances_val2017.json \
#       --out data/lvis_v1/annotations/lvis_v1_val_cocofied.json
# LVIS v1 names images by their COCO url (train2017/... or val2017/...), found under data/coco/.
_base_ = '../mask-rcnn_r50_fpn_1x_coco_refined.py'

cocofied_ann_file = 'data/lvis_v1/annotations/lvis_v1_val_cocofied.json'
coco_classes = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush')

test_dataloader = dict(
    dataset=dict(
        type='LVISV1Dataset',
        data_root='data/',
        ann_file='lvis_v1/annotations/lvis_v1_val_cocofied.json',
        data_prefix=dict(img='coco/'),
        metainfo=dict(classes=coco_classes)))
# LVIS's federated rules on the COCO categories; APr/APc/APf use LVIS's frequencies.
test_evaluator = dict(_delete_=True, type='LVISBoundaryMetric', ann_file=cocofied_ann_file)
