#!/usr/bin/env bash
# One CutLER self-training round with refined pseudo-masks (see README.md in this directory).
# Run from CutLER/cutler with DETECTRON2_DATASETS and REFINE_HOOKS set:
#   bash $REFINE_HOOKS/projects/CutLER/self_train_round.sh ROUND PREV_ANN PREV_CKPT [GPUS]
# e.g. bash .../self_train_round.sh 1 imagenet_train_fixsize480_tau0.15_N3.json output/r0/model_0009999.pth 8
# Every step can be rerun after a crash; the refinement step resumes where it stopped.
set -euo pipefail
r=$1; PREV_ANN=$2; PREV_CKPT=$3; GPUS=${4:-8}
ANN=$DETECTRON2_DATASETS/imagenet/annotations
IMG=$DETECTRON2_DATASETS/imagenet/train

if [ ! -f output/r$r-pred/inference/coco_instances_results.json ]; then
  python train_net.py --num-gpus $GPUS \
    --config-file model_zoo/configs/CutLER-ImageNet/cascade_mask_rcnn_R_50_FPN.yaml \
    --test-dataset imagenet_train \
    --eval-only TEST.DETECTIONS_PER_IMAGE 30 \
    MODEL.WEIGHTS $PREV_CKPT OUTPUT_DIR output/r$r-pred/
fi

if [ ! -f $ANN/cutler_imagenet1k_train_r$r.coarse.json ]; then
  python tools/get_self_training_ann.py \
    --new-pred output/r$r-pred/inference/coco_instances_results.json \
    --prev-ann $ANN/$PREV_ANN \
    --save-path $ANN/cutler_imagenet1k_train_r$r.coarse.json \
    --threshold 0.7
fi

torchrun --nproc_per_node=$GPUS $REFINE_HOOKS/tools/refine_pseudo_labels.py \
  $ANN/cutler_imagenet1k_train_r$r.coarse.json --images $IMG --out $ANN/cutler_imagenet1k_train_r$r.json \
  --model-type vit_h --device cuda --precision bf16 --workers 8 --max-masks-per-batch 64

python train_net.py --num-gpus $GPUS \
  --config-file model_zoo/configs/CutLER-ImageNet/cascade_mask_rcnn_R_50_FPN_self_train.yaml \
  --train-dataset imagenet_train_r$r \
  MODEL.WEIGHTS $PREV_CKPT OUTPUT_DIR output/self-train-r$r/
