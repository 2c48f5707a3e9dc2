"""``PseudoLabelRefineHook``: end a Detectron2 self-training round (CutLER-style) with refined pseudo labels.

A round: the current model predicts on an unlabeled registered dataset, detections above ``score_thr``
become a COCO annotation file (``<out_dir>/<round>/pseudo_coarse.json``), and the pseudo-label job of
:mod:`refine_hooks.jobs` (the code behind ``tools/refine_pseudo_labels.py``) refines it into
``<out_dir>/<round>/pseudo_refined.json``, registered as dataset ``<unlabeled>_pseudo_<round>``. Then:

- every ``period`` iterations (if set), the trainer's data loader is rebuilt on the new dataset and
  training goes on with it;
- after training, the next round's set-up is logged and written to ``<out_dir>/final/next_round.txt``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, List, Mapping, Optional

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import HookBase
from detectron2.utils import comm
from tqdm import tqdm

from refine_hooks.jobs import refine_annotation_file
from refine_hooks.jobs.rounds import (COARSE_NAME, REFINED_NAME, RoundAnnotations, detections_to_annotations,
                                      merge_rank_annotations, round_job_options, write_coarse_file,
                                      write_coarse_probabilities)
from refine_hooks.uncertainty import coarse_probability_path
from refine_hooks.refiners.detections import masks_to_bool
from refine_hooks.refiners.registry import RefinerSpec, build_on_device, module_device

from .evaluation import dataset_category_ids
from .meta_arch import RefinementMixin
from .uncertainty import keep_mask_probabilities, register_coco_instances_with_uncertainty

logger = logging.getLogger(__name__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model


def unrefined_forward(model: torch.nn.Module) -> Callable:
    """The detector's own ``forward``: a refined meta-architecture's without refinement (the job refines)."""
    if isinstance(model, RefinementMixin):
        return super(RefinementMixin, model).forward
    return model.forward


class PseudoLabelRefineHook(HookBase):
    """Make refined pseudo labels for the next self-training round.

    Args:
        cfg: the training config (its ``INPUT`` / ``DATALOADER`` settings build the loaders).
        unlabeled_dataset: a registered dataset (``register_coco_instances`` with an image-info file, e.g.
            COCO's ``image_info_unlabeled2017.json`` or CutLER's ImageNet list) whose metadata has
            ``json_file`` and ``image_root``.
        out_dir: where rounds are written (``<out_dir>/iter_<k>/``, ``<out_dir>/final/``).
        refiner: refiner config (``dict(type="SAMRefiner", model_type="vit_h", ...)``) or a built refiner;
            it runs on the model's device.
        score_thr: keep detections with at least this score.
        period: also make a round every ``period`` iterations and train on it (in-process); 0: only after
            training.
        train_dataset_index: which entry of ``cfg.DATASETS.TRAIN`` the pseudo-label set replaces in-process.
        job_options: more :class:`refine_hooks.jobs.JobOptions` fields (``min_area``, ``keep_coarse``, ...).
        uncertainty: also write the refined file's uncertainty sidecar (the job's ``uncertainty``), with the
            detector's pasted mask probabilities as σ(s) (GeneralizedRCNN; others: the binary masks), and
            register the round with :func:`register_coco_instances_with_uncertainty`; docs/uncertainty.md.
    """

    def __init__(
        self,
        cfg: Any,
        unlabeled_dataset: str,
        out_dir: str,
        refiner: RefinerSpec,
        *,
        score_thr: float = 0.5,
        period: int = 0,
        train_dataset_index: int = -1,
        job_options: Optional[Mapping[str, Any]] = None,
        uncertainty: bool = False,
    ):
        if period < 0:
            raise ValueError(f"period must be 0 (only after training) or positive, got {period}")
        metadata = MetadataCatalog.get(unlabeled_dataset)
        for key in ("json_file", "image_root"):
            if not getattr(metadata, key, None):
                raise ValueError(f"{type(self).__name__}: the unlabeled dataset {unlabeled_dataset!r} has no {key} in "
                                 "its metadata; register it with register_coco_instances(name, {}, json, image_root)")
        self.cfg = cfg.clone()
        self.unlabeled_dataset = unlabeled_dataset
        self.out_dir = out_dir
        self.refiner_spec = refiner
        self.refiner = None
        self.score_thr = float(score_thr)
        self.period = period
        self.train_dataset_index = train_dataset_index
        self.job_options = dict(job_options or {})
        self.uncertainty = uncertainty
        self.last_output: Optional[str] = None  # the last refined file written
        self.last_dataset: Optional[str] = None  # the dataset registered for it
        self.last_summary = None  # this rank's refine_hooks.jobs.Summary of the last round

    # --------------------------------------------------------------------------- hook points
    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if not self.period or done % self.period or done >= self.trainer.max_iter:
            return  # the final round is after_train's
        name = self.make_round(f"iter_{done}")
        self._train_on(name)

    def after_train(self) -> None:
        if self.trainer.iter < self.trainer.max_iter:
            return  # Detectron2 sets iter = max_iter only when training finished: no round from a failed run
        name = self.make_round("final")
        self._tell_next_round(name)

    # --------------------------------------------------------------------------- a round
    def make_round(self, tag: str) -> str:
        """Predict on the unlabeled set, write the coarse file, refine it, register the result.

        Returns the name of the registered dataset of the refined pseudo labels.
        """
        metadata = MetadataCatalog.get(self.unlabeled_dataset)
        round_dir = os.path.join(self.out_dir, tag)
        coarse_path = os.path.join(round_dir, COARSE_NAME)
        refined_path = os.path.join(round_dir, REFINED_NAME)
        with open(metadata.json_file) as f:
            image_info = json.load(f)
        per_image = self._predict(dataset_category_ids(self.unlabeled_dataset, image_info))
        gathered = comm.all_gather(per_image)
        probabilities_path = coarse_probability_path(coarse_path)
        if comm.is_main_process():
            merged = merge_rank_annotations(gathered)
            write_coarse_probabilities(probabilities_path, merged, image_info)
            write_coarse_file(coarse_path, image_info, merged)
            logger.info(f"{type(self).__name__}: {len(merged)} detections with score >= {self.score_thr} on "
                        f"{len(image_info['images'])} unlabeled images written to {coarse_path}")
        comm.synchronize()

        device = module_device(unwrap(self.trainer.model))
        # Built on first use, then moved to wherever the model is now.
        self.refiner = build_on_device(self.refiner if self.refiner is not None else self.refiner_spec, device,
                                       type(self).__name__, log=logger.info)
        options = round_job_options(self.refiner_spec, device, progress=comm.is_main_process(), overrides=self.job_options)
        if self.uncertainty:
            options.uncertainty = True
            options.coarse_probabilities = probabilities_path if os.path.exists(probabilities_path) else None
        summary = refine_annotation_file(coarse_path, metadata.image_root, refined_path, options=options,
                                         refiner=self.refiner)
        comm.synchronize()
        self.last_summary = summary
        logger.info(f"{type(self).__name__}: refined pseudo labels of round '{tag}': {refined_path}\n{summary.text()}")
        name = f"{self.unlabeled_dataset}_pseudo_{tag}"
        if name in DatasetCatalog.list():  # a rerun of the same round
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register = register_coco_instances_with_uncertainty if self.uncertainty else register_coco_instances
        register(name, {}, refined_path, metadata.image_root)
        self.last_output, self.last_dataset = refined_path, name
        return name

    def _predict(self, category_ids: List[int]) -> RoundAnnotations:
        """This rank's pseudo-label annotations per image id (images without detections included)."""
        model = unwrap(self.trainer.model)
        forward = unrefined_forward(model)
        was_training = model.training
        model.eval()
        per_image: RoundAnnotations = {}
        empty = 0
        loader = build_detection_test_loader(self.cfg, self.unlabeled_dataset)
        try:
            with torch.no_grad():
                for inputs in tqdm(loader, desc="pseudo labels: predicting", disable=not comm.is_main_process()):
                    outputs, probabilities = keep_mask_probabilities(model, inputs) if self.uncertainty else (None, None)
                    if outputs is None:
                        outputs = forward(inputs)
                    for k, (record, output) in enumerate(zip(inputs, outputs)):
                        instances = output["instances"].to("cpu")
                        kept, n_empty = detections_to_annotations(
                            masks_to_bool(instances.pred_masks), instances.scores.float().numpy(),
                            instances.pred_classes.numpy(), record["image_id"], category_ids, self.score_thr,
                            None if probabilities is None else probabilities[k])
                        per_image[int(record["image_id"])] = kept
                        empty += n_empty
        finally:
            model.train(was_training)
        if empty:
            logger.info(f"{type(self).__name__}: {empty} detections above the threshold have an empty mask and are "
                        "not pseudo labels")
        return per_image

    # --------------------------------------------------------------------------- the next round
    def _train_datasets(self, name: str) -> List[str]:
        datasets = list(self.cfg.DATASETS.TRAIN)
        datasets[self.train_dataset_index] = name
        return datasets

    def _train_on(self, name: str) -> None:
        """Rebuild the trainer's data loader with ``name`` in place of the chosen training set."""
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATASETS.TRAIN = tuple(self._train_datasets(name))
        trainer = getattr(self.trainer, "_trainer", self.trainer)  # DefaultTrainer wraps a SimpleTrainer
        trainer.reset_data_loader(lambda: build_detection_train_loader(cfg))
        logger.info(f"{type(self).__name__}: training goes on with DATASETS.TRAIN = {cfg.DATASETS.TRAIN}")

    def _tell_next_round(self, name: str) -> None:
        image_root = MetadataCatalog.get(self.unlabeled_dataset).image_root
        datasets = ", ".join(f"'{d}'" for d in self._train_datasets(name))
        text = (f"# next self-training round: register the refined pseudo labels, then train on them\n"
                f"from detectron2.data.datasets import register_coco_instances\n"
                f"register_coco_instances('{name}', {{}}, '{os.path.abspath(self.last_output)}', "
                f"'{os.path.abspath(image_root)}')\n"
                f"# config: DATASETS.TRAIN \"({datasets},)\"\n")
        if comm.is_main_process():
            with open(os.path.join(os.path.dirname(self.last_output), "next_round.txt"), "w") as f:
                f.write(text)
        logger.info(f"{type(self).__name__}: the next round trains on {self.last_output}:\n{text}")

