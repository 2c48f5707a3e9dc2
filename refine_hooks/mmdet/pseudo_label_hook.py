"""``PseudoLabelRefineHook``: end a self-training round by writing the next round's refined pseudo labels.

A round: the current model predicts on the unlabeled set, detections above ``score_thr`` become a
COCO annotation file (``<out_dir>/<round>/pseudo_coarse.json``), and the pseudo-label job of
:mod:`refine_hooks.jobs` (the code behind ``tools/refine_pseudo_labels.py``) refines it into
``<out_dir>/<round>/pseudo_refined.json``. Then:

- in the middle of training (``interval`` epochs), the train dataloader is rebuilt in-process on the
  new file and training goes on with it;
- at the end of training, the command line for the next round is logged and written to
  ``<out_dir>/<round>/next_round.txt`` (a finished runner cannot train again in-process).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.dist import all_gather_object, barrier, get_rank
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmdet.registry import HOOKS
from tqdm import tqdm

from refine_hooks.data.predictions import mmdet_category_ids
from refine_hooks.jobs import JobOptions, refine_annotation_file
from refine_hooks.jobs.rounds import (COARSE_NAME, REFINED_NAME, detections_to_annotations,  # noqa: F401
                                      merge_rank_annotations, round_job_options, write_coarse_file,
                                      write_coarse_probabilities)
from refine_hooks.uncertainty import coarse_probability_path, uncertainty_path

from .predictions import masks_to_bool
from .uncertainty.probabilities import keeping_mask_probabilities
from .refiner_setup import build_on_device, module_device

def predictions_to_annotations(
    data_samples: Sequence, cat_ids: Sequence[int], score_thr: float, probabilities: Optional[Sequence] = None
) -> Tuple[List[Dict[str, Any]], int]:
    """COCO annotations of the data samples' detections with ``score >= score_thr`` and the number of
    those with an empty mask (see :func:`refine_hooks.jobs.rounds.detections_to_annotations`);
    ``probabilities``: per sample, the detector's kept mask probabilities (or None)."""
    out, empty = [], 0
    for k, sample in enumerate(data_samples):
        pred = sample.pred_instances
        kept, n_empty = detections_to_annotations(
            masks_to_bool(pred.masks), pred.scores.detach().float().cpu().numpy(), pred.labels.detach().cpu().numpy(),
            int(sample.img_id), cat_ids, score_thr, None if probabilities is None else probabilities[k])
        out += kept
        empty += n_empty
    return out, empty


def _dataset_node(cfg: Dict[str, Any], index: int) -> Dict[str, Any]:
    """The dataset config inside wrappers (``RepeatDataset``, ``ClassBalancedDataset``: ``dataset``;
    ``ConcatDataset``: ``datasets[index]``)."""
    node = cfg
    while True:
        if "datasets" in node:
            node = node["datasets"][index]
        elif "dataset" in node and isinstance(node["dataset"], dict):
            node = node["dataset"]
        else:
            return node


def _node_key(cfg: Dict[str, Any], index: int, root: str = "train_dataloader") -> str:
    """The ``--cfg-options`` key of :func:`_dataset_node`."""
    node, key = cfg, root
    while True:
        if "datasets" in node:
            i = index % len(node["datasets"])
            node, key = node["datasets"][i], f"{key}.datasets.{i}"
        elif "dataset" in node and isinstance(node["dataset"], dict):
            node, key = node["dataset"], f"{key}.dataset"
        else:
            return key


@HOOKS.register_module()
class PseudoLabelRefineHook(Hook):
    """Make refined pseudo labels for the next self-training round.

    Args:
        unlabeled_dataloader: dataloader config of the unlabeled set (a COCO-style dataset whose
            ``ann_file`` lists the images, e.g. ``image_info_unlabeled2017.json``, with the test pipeline).
        out_dir: where rounds are written (``<out_dir>/epoch_<k>/`` or ``<out_dir>/final/``); relative
            paths are under the runner's ``work_dir``.
        refiner: refiner config (``dict(type='SAMRefiner', model_type='vit_h', ...)``) or a built refiner;
            it runs on the model's device.
        score_thr: keep detections with at least this score.
        interval: also make a round every ``interval`` training epochs, and train on it (in-process);
            None: only after training.
        job_options: more :class:`refine_hooks.jobs.JobOptions` fields (``min_area``,
            ``max_masks_per_batch``, ``keep_coarse``, ...).
        dataset_index: which dataset of a ``ConcatDataset`` in ``train_dataloader`` takes the pseudo
            labels (default: the last).
        uncertainty: also write the uncertainty sidecar of the refined file (the job's ``uncertainty``),
            with the detector's mask probabilities as σ(s) where it has them (Mask R-CNN, Mask2Former;
            ``<round>/pseudo_coarse.probabilities.bin``); docs/uncertainty.md.
    """

    priority = "LOW"

    def __init__(
        self,
        unlabeled_dataloader: Dict[str, Any],
        out_dir: str,
        refiner: Any,
        score_thr: float = 0.5,
        interval: Optional[int] = None,
        job_options: Optional[Dict[str, Any]] = None,
        dataset_index: int = -1,
        uncertainty: bool = False,
    ):
        if interval is not None and interval < 1:
            raise ValueError(f"interval must be None or at least 1, got {interval}")
        self.unlabeled_dataloader = unlabeled_dataloader
        self.out_dir = out_dir
        self.refiner_spec = refiner
        self.refiner = None
        self.score_thr = float(score_thr)
        self.interval = interval
        self.job_options = dict(job_options or {})
        self.dataset_index = dataset_index
        self.uncertainty = uncertainty
        self.last_output: Optional[str] = None  # the last refined file written
        self._image_dir = ""  # the unlabeled images (absolute), set by make_round

    # --------------------------------------------------------------------------- hook points
    def after_train_epoch(self, runner) -> None:
        if self.interval is None or runner.epoch + 1 >= runner.max_epochs:
            return  # the final round is after_train's
        if (runner.epoch + 1) % self.interval == 0:
            path = self.make_round(runner, f"epoch_{runner.epoch + 1}")
            self._use_for_training(runner, path)

    def after_train(self, runner) -> None:
        path = self.make_round(runner, "final")
        self._tell_next_round(runner, path)

    # --------------------------------------------------------------------------- a round
    def make_round(self, runner, tag: str) -> str:
        """Predict on the unlabeled set, write the coarse file, refine it; returns the refined file."""
        out_dir = self.out_dir if os.path.isabs(self.out_dir) else os.path.join(runner.work_dir, self.out_dir)
        round_dir = os.path.join(out_dir, tag)
        os.makedirs(round_dir, exist_ok=True)
        coarse_path = os.path.join(round_dir, COARSE_NAME)
        refined_path = os.path.join(round_dir, REFINED_NAME)

        dataloader = runner.build_dataloader(copy.deepcopy(self.unlabeled_dataloader), seed=runner.seed)
        dataset = dataloader.dataset
        with open(dataset.ann_file) as f:
            unlabeled = json.load(f)
        cat_ids = mmdet_category_ids(unlabeled, dataset.metainfo.get("classes"))
        self._image_dir = os.path.abspath(dataset.data_prefix.get("img", ""))
        per_image = self._predict(runner, dataloader, cat_ids)
        gathered = all_gather_object(per_image)
        probabilities_path = coarse_probability_path(coarse_path)
        if get_rank() == 0:
            merged = merge_rank_annotations(gathered)
            write_coarse_probabilities(probabilities_path, merged, unlabeled)
            write_coarse_file(coarse_path, unlabeled, merged)
            print_log(f"{type(self).__name__}: {len(merged)} detections with score >= {self.score_thr} on "
                      f"{len(unlabeled['images'])} unlabeled images written to {coarse_path}", logger="current")
        barrier()

        device = module_device(runner.model)
        # Built on first use, then moved to wherever the model is now.
        self.refiner = build_on_device(self.refiner if self.refiner is not None else self.refiner_spec, device,
                                       type(self).__name__)
        options = self._job_options(device)
        if self.uncertainty:
            options.uncertainty = True
            options.coarse_probabilities = probabilities_path if os.path.exists(probabilities_path) else None
        summary = refine_annotation_file(coarse_path, dataset.data_prefix.get("img", ""), refined_path,
                                         options=options, refiner=self.refiner)
        barrier()
        print_log(f"{type(self).__name__}: refined pseudo labels of round '{tag}': {refined_path}\n{summary.text()}",
                  logger="current")
        self.last_output = refined_path
        return refined_path

    def _job_options(self, device: torch.device) -> JobOptions:
        return round_job_options(self.refiner_spec, device, progress=get_rank() == 0, overrides=self.job_options)

    def _predict(self, runner, dataloader, cat_ids: Sequence[int]) -> Dict[int, List[Dict[str, Any]]]:
        """This rank's annotations per image id (images without detections included)."""
        model = runner.model
        was_training = model.training
        model.eval()
        per_image: Dict[int, List[Dict[str, Any]]] = {}
        empty = 0
        keeping = keeping_mask_probabilities(model) if self.uncertainty else contextlib.nullcontext()
        try:
            with torch.no_grad(), keeping as probabilities:
                for data in tqdm(dataloader, desc="pseudo labels: predicting", disable=get_rank() != 0):
                    outputs = model.test_step(data)
                    soft = probabilities.for_samples(outputs) if probabilities is not None else None
                    kept, n_empty = predictions_to_annotations(outputs, cat_ids, self.score_thr, soft)
                    for sample in outputs:
                        per_image.setdefault(int(sample.img_id), [])
                    for annotation in kept:
                        per_image[annotation["image_id"]].append(annotation)
                    empty += n_empty
        finally:
            model.train(was_training)
        if empty:
            print_log(f"{type(self).__name__}: {empty} detections above the threshold have an empty mask and are "
                      "not pseudo labels", logger="current")
        return per_image

    # --------------------------------------------------------------------------- the next round
    def _use_for_training(self, runner, path: str) -> None:
        """Rebuild the train dataloader on the refined file (its image prefix: the unlabeled set's)."""
        from mmengine.runner.loops import _InfiniteDataloaderIterator

        cfg = copy.deepcopy(runner.cfg.train_dataloader)
        node = _dataset_node(cfg, self.dataset_index)
        node["ann_file"] = os.path.abspath(path)
        if node.get("uncertainty_file"):  # an UncertaintyCocoDataset naming its sidecar: the new round's
            node["uncertainty_file"] = uncertainty_path(os.path.abspath(path))
        node["data_prefix"] = dict(node.get("data_prefix") or {}, img=self._image_dir)
        loader = runner.build_dataloader(cfg, seed=runner.seed)
        loop = runner.train_loop
        loop.dataloader = loader
        if hasattr(loop, "_max_epochs"):  # epoch-based: the remaining epochs have the new length
            loop._max_iters = runner.iter + (loop._max_epochs - runner.epoch - 1) * len(loader)
        if hasattr(loop, "dataloader_iterator"):
            loop.dataloader_iterator = _InfiniteDataloaderIterator(loader)
        print_log(f"{type(self).__name__}: the train dataloader now reads {path} ({len(loader.dataset)} images)",
                  logger="current")

    def _tell_next_round(self, runner, path: str) -> None:
        key = _node_key(runner.cfg.train_dataloader, self.dataset_index)
        config = getattr(runner.cfg, "filename", None) or "<your config>"
        command = (f"python tools/train.py {config} --cfg-options {key}.ann_file={os.path.abspath(path)} "
                   f"{key}.data_prefix.img={self._image_dir}/")
        if get_rank() == 0:
            with open(os.path.join(os.path.dirname(path), "next_round.txt"), "w") as f:
                f.write(command + "\n")
        print_log(f"{type(self).__name__}: the next round trains on {path}; run:\n  {command}", logger="current")
