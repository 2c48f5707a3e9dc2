"""SAMRefiner++'s IoU adaption: teach SAM's IoU head to rank first the candidate mask that agrees best
with the coarse masks of a dataset, without any ground truth.

For each coarse mask, SAM decodes its tight box (box prompt only, multimask output, one iteration); the
candidate whose mask (logits > 0, at the image's size) has the highest IoU with the coarse mask is the
positive, and ``MarginRankingLoss(margin=0.02, reduction="sum")`` asks the predicted IoU of the positive to
exceed each of the other two by the margin. Only a rank-4 LoRA on the IoU head's last layer trains
(:mod:`refine_hooks.sam.iou_adaption`): SGD (lr 1e-2, momentum 0.9, weight decay 5e-4), the loss of 5
samples summed (each divided by 5) per step, ``MultiStepLR`` at steps 60 and 100 (gamma 0.1), one epoch:
the authors' settings (``shared/SAMREFINER_FACTS.md``).

Ordering differs from the authors' loader (a shuffled list of single-object images): images are shuffled,
and the masks of an image follow each other in shuffled order, so each image is encoded once. As in the
authors' loop, samples left over after the last full group of 5 in an epoch do not make a step (counted in
the log).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..data.annotations import load_annotation_file
from ..data.images import load_image
from ..data.masks import masks_to_xyxy, segmentation_to_mask
from ..sam import SamEngine
from ..sam.iou_adaption import add_iou_lora, lora_parameters, save_iou_adapter

# (uint8 RGB H x W x 3 image, bool N x H x W coarse masks)
Sample = Tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class IoUAdaptionConfig:
    """Training settings; defaults are the authors'."""

    rank: int = 4
    alpha: float = 1.0
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Tuple[int, ...] = (60, 100)
    gamma: float = 0.1
    accumulate: int = 5
    margin: float = 0.02
    epochs: int = 1
    seed: int = 0
    min_area: int = 1

    def __post_init__(self):
        if self.accumulate < 1 or self.epochs < 1 or self.rank < 1:
            raise ValueError(f"accumulate, epochs and rank must be >= 1, got {self.accumulate}, {self.epochs}, {self.rank}")


@dataclasses.dataclass
class TrainingLog:
    """What training did.

    Attributes:
        samples: coarse masks trained on (over all epochs).
        skipped: masks below ``min_area`` (empty ones included), not trained on.
        steps: optimizer steps.
        leftover: samples after the last full group of an epoch (no step made from them).
        step_losses: the summed loss of each step's group.
        agreement: per epoch, the fraction of samples whose highest predicted IoU was already on the
            positive candidate (before that sample's step).
    """

    samples: int = 0
    skipped: int = 0
    steps: int = 0
    leftover: int = 0
    step_losses: List[float] = dataclasses.field(default_factory=list)
    agreement: List[float] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        last = f", last step loss {self.step_losses[-1]:.4f}" if self.step_losses else ""
        agreement = ", ".join(f"{a:.3f}" for a in self.agreement)
        return (f"{self.samples} samples, {self.steps} steps ({self.leftover} left over, {self.skipped} masks below "
                f"min_area skipped){last}; top-1 agreement with the coarse masks per epoch: {agreement}")


def positive_candidate(candidates: torch.Tensor, coarse: torch.Tensor) -> Tuple[int, torch.Tensor]:
    """The candidate with the highest IoU with the coarse mask (the first among ties) and the IoUs.

    Args:
        candidates: bool ``K x H x W``.
        coarse: bool ``H x W``.
    """
    intersection = (candidates & coarse).flatten(1).sum(1).double()
    union = (candidates | coarse).flatten(1).sum(1).double()
    ious = torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))
    return int(torch.argmax(ious)), ious


def ranking_loss(predicted: torch.Tensor, positive: int, margin: float) -> torch.Tensor:
    """Sum over the other candidates of ``max(0, margin - (predicted[positive] - predicted[other]))``.

    Args:
        predicted: float ``K``, the IoU head's predictions for one prompt.
    """
    loss_fn = nn.MarginRankingLoss(margin=margin, reduction="sum")
    target = torch.ones(1, device=predicted.device, dtype=predicted.dtype)
    return sum(loss_fn(predicted[positive:positive + 1], predicted[other:other + 1], target)
               for other in range(predicted.shape[0]) if other != positive)


class IoUAdaptionTrainer:
    """Trains the IoU-head LoRA of ``engine.model`` (added here) on coarse masks.

    Args:
        engine: a :class:`~refine_hooks.sam.SamEngine` on a SAM without an IoU-head LoRA.
        config: training settings.
    """

    def __init__(self, engine: SamEngine, config: IoUAdaptionConfig = IoUAdaptionConfig()):
        self.engine = engine
        self.config = config
        for parameter in engine.model.parameters():
            parameter.requires_grad_(False)
        add_iou_lora(engine.model, rank=config.rank, alpha=config.alpha, seed=config.seed).to(engine.device)
        self.parameters = lora_parameters(engine.model)
        self.optimizer = torch.optim.SGD(self.parameters, lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(config.milestones),
                                                              gamma=config.gamma)
        self.log = TrainingLog()

    def sample_loss(self, embedding, coarse: np.ndarray) -> Tuple[torch.Tensor, bool]:
        """The ranking loss of one coarse mask (bool ``H x W``) and whether the head already ranks the
        positive candidate first."""
        box = torch.from_numpy(masks_to_xyxy(coarse[None]).astype(np.float32))
        low_res, predicted = self.engine.decode_boxes_with_grad(embedding, box)
        with torch.no_grad():
            candidates = self.engine.upsample_logits(low_res[0].detach(), embedding) > 0
        positive, _ = positive_candidate(candidates, torch.from_numpy(coarse).to(candidates.device))
        agrees = int(torch.argmax(predicted[0].detach())) == positive
        return ranking_loss(predicted[0], positive, self.config.margin), agrees

    def train(self, samples: Sequence[Sample], *, progress=None) -> TrainingLog:
        """Train for ``config.epochs`` epochs over ``(image, coarse masks)`` pairs, images in a seeded
        random order per epoch.

        Args:
            samples: a sequence (a list, or a lazily loading dataset such as :class:`CoarseMaskDataset`).
            progress: wraps each epoch's image order (e.g. ``tqdm``), or None.
        """
        config, log = self.config, self.log
        rng = np.random.default_rng(config.seed + len(log.agreement))  # another order for a further call
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        self.engine.model.eval()  # SAM has no dropout / batch norm; eval keeps it that way explicitly
        for _ in range(config.epochs):
            pending, agreed, seen = 0, 0, 0
            group_loss = 0.0
            self.optimizer.zero_grad(set_to_none=True)
            order = rng.permutation(len(samples))
            for index in (progress(order) if progress else order):
                image, masks = samples[int(index)]
                areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
                usable = np.flatnonzero(areas >= max(config.min_area, 1))
                log.skipped += masks.shape[0] - usable.size
                if usable.size == 0:
                    continue
                embedding = self.engine.encode([image])[0]
                for mask_index in rng.permutation(usable):
                    loss, agrees = self.sample_loss(embedding, masks[mask_index])
                    (loss / config.accumulate).backward()
                    group_loss += float(loss.detach()) / config.accumulate
                    agreed += int(agrees)
                    seen += 1
                    pending += 1
                    log.samples += 1
                    if pending == config.accumulate:
                        self.optimizer.step()
                        self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                        log.steps += 1
                        log.step_losses.append(group_loss)
                        pending, group_loss = 0, 0.0
            log.leftover += pending
            self.optimizer.zero_grad(set_to_none=True)
            log.agreement.append(agreed / seen if seen else float("nan"))
        for parameter in self.parameters:
            parameter.requires_grad_(False)
        return log

    def save(self, path, **metadata: Any):
        """Write the trained adapter (:func:`refine_hooks.sam.iou_adaption.save_iou_adapter`)."""
        info: Dict[str, Any] = {"config": dataclasses.asdict(self.config), "log": dataclasses.asdict(self.log)}
        info.update(metadata)
        return save_iou_adapter(self.engine.model, path, **info)


class CoarseMaskDataset:
    """``(image, coarse masks)`` per image of a mask-record file (COCO annotations, a result list or a
    Detectron2 ``.pth``, as the pseudo-label job reads them), loaded on access.

    Args:
        annotation_file: the coarse masks (e.g. a detector's pseudo labels).
        image_dir: where the file's ``file_name`` s are.
        image_info: COCO file naming the images of a result list / ``.pth``.
    """

    def __init__(self, annotation_file: str, image_dir: str, image_info: Optional[str] = None):
        self.annotation_file = annotation_file
        self.source = load_annotation_file(annotation_file, image_info)
        self.image_dir = image_dir
        by_image: Dict[Any, List[Dict[str, Any]]] = {}
        for record in self.source.records:
            if not record.get("iscrowd", 0):
                by_image.setdefault(record["image_id"], []).append(record)
        self.image_ids = [image_id for image_id in self.source.image_order if by_image.get(image_id)]
        self.records = by_image

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_masks(self) -> int:
        """Non-crowd records of the images in :attr:`image_ids`: at most this many samples per epoch."""
        return sum(len(self.records[image_id]) for image_id in self.image_ids)

    def check_inputs(self, *, progress: bool = False) -> List[str]:
        """What would stop training part-way, found before a model is built, as the pseudo-label job finds
        it (:mod:`refine_hooks.jobs.plan`): raises :class:`~refine_hooks.jobs.JobInputError` listing
        malformed records, and returns the problems of the images in :attr:`image_ids` (missing, not an
        image, another size than the file says), each naming the file; empty when all is well."""
        from ..jobs.plan import JobInputError, build_plan, check_images

        try:
            plan = build_plan(self.source, self.image_dir, score_thr=-math.inf, skip_invalid_records=False)
        except JobInputError as error:
            listed = "\n  ".join(error.problems[:20])
            more = f"\n  ... and {len(error.problems) - 20} more" if len(error.problems) > 20 else ""
            raise JobInputError(f"{len(error.problems)} invalid records in {self.annotation_file}; nothing was "
                                f"trained:\n  {listed}{more}", error.problems) from None
        wanted = set(self.image_ids)
        works = [work for work in plan.images if work.image_id in wanted]
        return check_images(works, skip_missing_images=False, skip_invalid_records=False, progress=progress,
                            skip_hints=False)

    def __getitem__(self, index: int) -> Sample:
        info = self.source.images[self.image_ids[index]]
        image = load_image(os.path.join(self.image_dir, info.file_name))
        height, width = image.shape[:2]
        if info.height is not None and (info.height, info.width) != (height, width):
            raise ValueError(f"image {info.image_id}: {info.file_name} is {height}x{width} but the annotation file "
                             f"says {info.height}x{info.width}")
        masks = []
        for record in self.records[info.image_id]:
            try:
                masks.append(segmentation_to_mask(record["segmentation"], height, width))
            except Exception as error:  # noqa: BLE001 - every malformed record gets the same message
                raise ValueError(f"image {info.image_id} ({info.file_name}): annotation {record.get('id')} has a "
                                 f"segmentation that cannot be decoded at {height}x{width}: {error}") from error
        return image, np.stack(masks).astype(bool)
