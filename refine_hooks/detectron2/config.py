"""``add_refiner_config``: the ``MODEL.REFINER`` keys, as Detectron2 projects add theirs.

    cfg = get_cfg()
    add_refiner_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "RefinedMetaArch"      # the one line that adds refinement
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN

from refine_hooks.refiners import Phoenix, SAMRefiner

BOXES_MODES = {"auto": None, "all": True, "empty": False}

# Constructor arguments of SAMRefiner that are about throughput, not the method.
_NOT_EXPOSED = {"encoder_batch_size"}


def samrefiner_hyper_parameters():
    """``{name: default}`` of SAMRefiner's hyper-parameters, as ``MODEL.REFINER.SAMREFINER`` exposes them."""
    return {name: default for name, default in SAMRefiner.hyper_parameters().items() if name not in _NOT_EXPOSED}


def phoenix_options():
    """``{name: default}`` of the Phoenix refiner's options, as ``MODEL.REFINER.PHOENIX`` exposes them (its
    prompts and mask encoding come from its checkpoint)."""
    return {name: default for name, default in Phoenix.hyper_parameters().items() if name not in _NOT_EXPOSED}


def add_refiner_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.REFINER`` with the defaults below (idempotent).

    ``MODEL.REFINER``:
        BASE_META_ARCHITECTURE: the meta-architecture whose masks ``RefinedMetaArch`` refines.
        TYPE: refiner type (``SAMRefiner`` or ``Phoenix``).
        MODEL_TYPE: SAM variant from :mod:`refine_hooks.sam.registry` (``vit_h``, ``vit_b``, ``sam_hq_vit_h``...).
        CHECKPOINT: SAM checkpoint path; empty: the official checkpoint, downloaded once into the cache.
        PRECISION: ``fp32``, ``bf16`` or ``fp16`` for SAM's image encoder and mask decoder (transformer, upscaling).
        DECODER_CHUNK_SIZE: prompt sets per SAM decoder call.
        IOU_ADAPTER: SAMRefiner++'s IoU adapter file (``tools/train_iou_adaption.py``); empty: SAM's IoU head.
        REFINER_CHECKPOINT: ``TYPE: Phoenix``: the trained refiner (``tools/train_refiner.py``), trained on
            the SAM that MODEL_TYPE / CHECKPOINT name.
        SCORE_THRESH: refine detections with at least this score; the others keep their masks.
        KEEP_UNREFINED: also keep the detector's masks as ``instances.unrefined_masks``.
        BOXES_FROM_REFINED_MASKS: ``auto`` (boxes derived from masks or empty follow the refined mask,
            box-head boxes stay), ``all`` or ``empty``.
        IMAGE_SOURCE: ``auto`` (read ``file_name``, else rebuild from the batch's ``image``),
            ``file_name`` or ``inputs``.
        SAMREFINER: SAMRefiner's hyper-parameters (``ITERATIONS``, ``USE_BOX``, ``MARGIN``, ``GAMMA``...),
            defaults from :class:`refine_hooks.refiners.SAMRefiner`.
        PHOENIX: the Phoenix refiner's options (``ITERATIONS``, ``MULTIMASK_OUTPUT``, ``MIN_AREA``...).
    """
    if "REFINER" in cfg.MODEL:
        return
    node = CN()
    node.BASE_META_ARCHITECTURE = "GeneralizedRCNN"
    node.TYPE = "SAMRefiner"
    node.MODEL_TYPE = "vit_h"
    node.CHECKPOINT = ""
    node.PRECISION = "fp32"
    node.DECODER_CHUNK_SIZE = 64
    node.IOU_ADAPTER = ""
    node.REFINER_CHECKPOINT = ""
    node.SCORE_THRESH = 0.0
    node.KEEP_UNREFINED = False
    node.BOXES_FROM_REFINED_MASKS = "auto"
    node.IMAGE_SOURCE = "auto"
    node.SAMREFINER = CN({name.upper(): value for name, value in samrefiner_hyper_parameters().items()})
    node.PHOENIX = CN({name.upper(): value for name, value in phoenix_options().items()})
    cfg.MODEL.REFINER = node


def refinement_options_from_config(cfg: CN):
    """The :class:`~refine_hooks.detectron2.RefinementOptions` that ``cfg.MODEL.REFINER`` describes."""
    from .meta_arch import RefinementOptions

    node = cfg.MODEL.REFINER
    if node.BOXES_FROM_REFINED_MASKS not in BOXES_MODES:
        raise ValueError(f"MODEL.REFINER.BOXES_FROM_REFINED_MASKS must be one of {list(BOXES_MODES)}, "
                         f"got {node.BOXES_FROM_REFINED_MASKS!r}")
    refiner = dict(type=node.TYPE, model_type=node.MODEL_TYPE, checkpoint=node.CHECKPOINT or None,
                   precision=node.PRECISION, decoder_chunk_size=node.DECODER_CHUNK_SIZE,
                   iou_adapter=node.IOU_ADAPTER or None)
    if node.TYPE == "SAMRefiner":
        refiner.update({name.lower(): value for name, value in node.SAMREFINER.items()})
    elif node.TYPE == "Phoenix":
        refiner.update({name.lower(): value for name, value in node.PHOENIX.items()})
        refiner["refiner_checkpoint"] = node.REFINER_CHECKPOINT or None
    return RefinementOptions(
        refiner=refiner,
        score_thr=node.SCORE_THRESH,
        keep_unrefined=node.KEEP_UNREFINED,
        boxes_from_refined_masks=BOXES_MODES[node.BOXES_FROM_REFINED_MASKS],
        image_source=node.IMAGE_SOURCE,
        input_format=cfg.INPUT.FORMAT,
    )
