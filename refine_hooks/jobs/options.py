"""What a pseudo-label refinement job is asked to do, and which of it decides the result."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

from ..files import file_sha256

from ..uncertainty.maps import BINARY_COARSE_WIDTH, DEFAULT_THETA

REFINERS = ("samrefiner", "phoenix")



@dataclasses.dataclass
class JobOptions:
    """Options of :func:`refine_hooks.jobs.refine_annotation_file`.

    Result-deciding options (the refiner, its model and hyper-parameters, thresholds, what is kept) are
    recorded in the work directory's manifest; resuming with different ones is refused. Throughput
    options (``workers``, ``max_masks_per_batch``, ``images_per_batch``, ``shard``, ``device`` index) may
    change between runs, and so may ``refiner_kwargs["decoder_chunk_size"]`` when the decoder is batch
    invariant (on CPU by default), where it cannot change a pixel.

    Attributes:
        refiner: ``"samrefiner"`` or ``"phoenix"``.
        refiner_kwargs: more hyper-parameters, passed to the refiner's constructor.
        model_type: SAM variant (``vit_b``, ``vit_l``, ``vit_h``, ``tiny``).
        checkpoint: SAM weights file; ``None`` lets the refiner fetch / build its default.
        device: ``cpu``, ``cuda`` or ``cuda:N``; under torchrun ``cuda`` becomes ``cuda:LOCAL_RANK``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        score_thr: records with a ``score`` below it are passed through (``below_score_thr``), not refined;
            with a threshold above 0, so are records without a score (``no_score``, see
            :mod:`refine_hooks.scores`).
        min_area: coarse masks with fewer pixels are passed through, not refined.
        max_masks_per_batch: images are gathered into one refiner call until they hold this many masks
            (the GPU batch; an image's masks are never split by it, see ``worker.MASK_PIXEL_BUDGET``).
        images_per_batch: images per refiner call at most.
        workers: DataLoader workers that decode images and masks ahead of the refiner (0: in-process).
        limit: refine only the first ``limit`` images (in file order); the output holds only those.
        skip_missing_images: copy the records of missing / unreadable images through (with the reason)
            instead of stopping before any work.
        skip_invalid_records: copy records whose segmentation is malformed, whose size disagrees with the
            image, or whose image is unknown, instead of stopping before any work.
        keep_coarse: store the input mask of each refined record as ``coarse_segmentation``.
        image_info: COCO annotation file naming the images of a result list or ``.pth`` input.
        chunk_size: images per shard file (the unit of work that survives a crash).
        shard: ``(index, count)``: process only this part of the images (cluster schedulers).
        keep_work_dir: keep the shards after the final file is written.
        progress: show a progress bar.
        uncertainty: also write SUM's uncertainty map of every refined record into the sidecar
            ``<OUT>.uncertainty.bin`` and its summary into the record's ``refinement`` (docs/uncertainty.md).
        coarse_probabilities: with ``uncertainty``, a map file of the detector's probabilities of the coarse
            masks (written by the framework hooks), used as σ(s); None: the binary masks' signed-distance
            sigmoid of width ``coarse_width`` pixels.
        coarse_width: see ``coarse_probabilities``.
        uncertainty_theta: θ of the per-record summary's "certain" pixels (c > θ).
    """

    refiner: str = "samrefiner"
    refiner_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    model_type: str = "vit_h"
    checkpoint: Optional[str] = None
    device: str = "cpu"
    precision: str = "fp32"
    score_thr: float = 0.0
    min_area: int = 0
    max_masks_per_batch: int = 64
    images_per_batch: int = 4
    workers: int = 2
    limit: Optional[int] = None
    skip_missing_images: bool = False
    skip_invalid_records: bool = False
    keep_coarse: bool = False
    image_info: Optional[str] = None
    chunk_size: int = 64
    shard: Tuple[int, int] = (0, 1)
    keep_work_dir: bool = False
    progress: bool = True
    uncertainty: bool = False
    coarse_probabilities: Optional[str] = None
    coarse_width: float = BINARY_COARSE_WIDTH
    uncertainty_theta: float = DEFAULT_THETA

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option that is out of range."""
        if self.refiner not in REFINERS:
            raise ValueError(f"--refiner must be one of {', '.join(REFINERS)}, got {self.refiner!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        for name in ("max_masks_per_batch", "images_per_batch", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.workers < 0:
            raise ValueError("--workers must be 0 or more")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be at least 1")
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard must be i/n with 0 <= i < n, got {index}/{count}")
        if self.coarse_probabilities is not None and not self.uncertainty:
            raise ValueError("--coarse-probabilities is only used with --uncertainty")
        if not self.coarse_width > 0:
            raise ValueError(f"--coarse-width must be positive, got {self.coarse_width}")
        if not 0 <= self.uncertainty_theta < 1:
            raise ValueError(f"--uncertainty-theta must be in [0, 1), got {self.uncertainty_theta}")

    @property
    def batch_invariant_decoder(self) -> bool:
        """The SAM decoder decodes one prompt set per call (``SamEngine.batch_invariant``: the CPU default),
        so ``decoder_chunk_size`` cannot change results."""
        invariant = self.refiner_kwargs.get("batch_invariant")
        return self.device.split(":")[0] == "cpu" if invariant is None else bool(invariant)

    def result_options(self) -> Dict[str, Any]:
        """The options that decide the output file, JSON-ready (the manifest compares them on resume)."""
        refiner_kwargs = dict(self.refiner_kwargs)
        if self.batch_invariant_decoder:
            refiner_kwargs.pop("decoder_chunk_size", None)
        checkpoint = None
        if self.checkpoint is not None:
            # Path and size: hashing a 2.5 GB vit_h file on every start would cost more than it saves.
            path = os.path.abspath(self.checkpoint)
            checkpoint = {"path": path, "size": os.path.getsize(path) if os.path.exists(path) else None}
        options = {
            "refiner": self.refiner,
            # All of them, chunk sizes included (they decide which prompts share a decoder call, which
            # changes floating-point results), except the decoder's chunk size when it decodes one
            # prompt set per call anyway.
            "refiner_kwargs": json.loads(json.dumps(refiner_kwargs, sort_keys=True, default=str)),
            "model_type": self.model_type,
            "checkpoint": checkpoint,
            "device_type": self.device.split(":")[0],
            "precision": self.precision,
            "score_thr": float(self.score_thr),
            "min_area": int(self.min_area),
            "limit": self.limit,
            "skip_missing_images": self.skip_missing_images,
            "skip_invalid_records": self.skip_invalid_records,
            "keep_coarse": self.keep_coarse,
            "chunk_size": self.chunk_size,
        }
        if self.uncertainty:  # only then: the manifests of plain jobs stay as they were
            options["uncertainty"] = self.uncertainty_options()
        return options

    def uncertainty_options(self) -> Dict[str, Any]:
        """What decides the uncertainty maps (recorded in the manifest and the sidecar's header)."""
        coarse: Dict[str, Any] = {"source": "binary_signed_distance", "width": float(self.coarse_width)}
        if self.coarse_probabilities is not None:
            path = os.path.abspath(self.coarse_probabilities)
            coarse = {"source": "detector_probabilities", "file": os.path.basename(path),
                      "sha256": file_sha256(path) if os.path.exists(path) else None}
        return {"coarse": coarse, "theta": float(self.uncertainty_theta)}

