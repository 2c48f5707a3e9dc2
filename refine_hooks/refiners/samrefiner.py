"""SAMRefiner: training-free refinement of coarse masks by prompts mined from the masks themselves.

Lin et al., "SAMRefiner: Taming Segment Anything Model for Universal Mask Refinement", ICLR 2025.
Defaults follow the authors' implementation (see ``shared/SAMREFINER_FACTS.md`` and the README):
5 cascaded iterations, positive + negative point, elastic box (λ = 0.1 for instances, 0 for semantic
masks), Gaussian mask prompt with γ = 4 and ω = 30, 3 candidates ranked by the IoU head.
"""

from __future__ import annotations

import inspect

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.masks import masks_to_xyxy
from ..data.windows import WindowedMap, mask_box, union_box
from ..prompts import (
    DISTANCE_KINDS,
    GAUSSIAN_KINDS,
    EmbeddingSimilarity,
    dense_mask_prompt,
    elastic_boxes,
    gaussian_weights,
    interior_distance,
    point_prompts,
    split_then_merge,
)
from ..sam.engine import ImageEmbedding, SamEngine
from ..timing import NullTimer
from .base import PASS_BELOW_MIN_AREA, PASS_EMPTY, PASS_SAM_EMPTY, Refiner, RefineResult, check_image_and_masks


class SAMRefiner(Refiner):
    """Refine coarse instance or semantic masks with SAM and prompts mined from the masks.

    Args:
        engine: the SAM model runner.
        iterations: cascade length; each iteration re-mines prompts from the previous output.
        use_point, use_box, use_mask: switch each prompt type on or off.
        add_negative: add the negative point (background pixel in the box farthest from the mask).
        margin: λ of the elastic box for instance masks (0 keeps the tight box).
        semantic_margin: λ used by :meth:`refine_semantic` (the authors' default 0).
        gamma: γ, the spread of the Gaussian mask prompt.
        strength: ω, the amplitude of the mask prompt (the authors' code: 30; the paper: 15).
        gaussian: ``distance`` (the authors' code), ``spatial`` (the paper's eq. 3) or ``binary`` (no
            Gaussian: +strength on the whole mask, the encoding trained refiners default to).
        multimask_output: decode 3 candidates and keep the one with the highest predicted IoU.
        distance: ``exact`` Euclidean distance transforms (default), or ``raster``: the authors' FastGeodis
            raster scan, whose values (and so points and mask prompts) equal theirs; slower (the
            negative point's scan covers the whole image).
        min_area: masks with fewer pixels pass through unchanged.
        stm_mu: μ of split-then-merge.
        max_chunk_pixels: masks x image pixels processed together at full resolution; with
            ``engine.decoder_chunk_size`` it bounds memory on large images with many masks.
        encoder_batch_size: images per encoder call in :meth:`refine_batch`.
        timer: a :class:`refine_hooks.timing.StageTimer` to profile stages (benchmark tool).
    """

    def __init__(
        self,
        engine: SamEngine,
        *,
        iterations: int = 5,
        use_point: bool = True,
        use_box: bool = True,
        use_mask: bool = True,
        add_negative: bool = True,
        margin: float = 0.1,
        semantic_margin: float = 0.0,
        gamma: float = 4.0,
        strength: float = 30.0,
        gaussian: str = "distance",
        multimask_output: bool = True,
        distance: str = "exact",
        min_area: int = 1,
        stm_mu: float = 0.5,
        max_chunk_pixels: int = 1 << 26,
        encoder_batch_size: int = 1,
        timer=None,
    ):
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not (use_point or use_box or use_mask):
            raise ValueError("at least one of use_point, use_box, use_mask must be on")
        if gaussian not in GAUSSIAN_KINDS:
            raise ValueError(f"gaussian must be one of {GAUSSIAN_KINDS}, got {gaussian!r}")
        if distance not in DISTANCE_KINDS:
            raise ValueError(f"distance must be one of {DISTANCE_KINDS}, got {distance!r}")
        self.engine = engine
        self.iterations = iterations
        self.use_point, self.use_box, self.use_mask = use_point, use_box, use_mask
        self.add_negative = add_negative
        self.margin, self.semantic_margin = margin, semantic_margin
        self.gamma, self.strength, self.gaussian = gamma, strength, gaussian
        self.multimask_output = multimask_output
        self.distance = distance
        self.min_area = min_area
        self.stm_mu = stm_mu
        self.max_chunk_pixels = max_chunk_pixels
        self.encoder_batch_size = encoder_batch_size
        self.timer = timer or NullTimer()

    # Where each default comes from (command-line help prints it; README "SAMRefiner, as published").
    # "paper": Lin et al., ICLR 2025; "code": the authors' implementation (shared/SAMREFINER_FACTS.md).
    DEFAULT_SOURCES = {
        "iterations": "the authors' code (the paper gives no number)",
        "use_point": "paper and code: all three prompt types",
        "use_box": "paper and code: all three prompt types",
        "use_mask": "paper and code: all three prompt types",
        "add_negative": "paper and code",
        "margin": "the paper's elastic-box lambda; the authors' code uses 0 (box not expanded)",
        "semantic_margin": "the authors' code",
        "gamma": "paper and code",
        "strength": "the authors' code; the paper says 15",
        "gaussian": "the authors' code; the paper's eq. 3 is 'spatial'",
        "multimask_output": "paper and code: highest predicted IoU of 3 candidates",
        "distance": "ours: exact Euclidean; 'raster' reproduces the authors' FastGeodis values",
        "min_area": "ours: masks under 1 pixel are empty",
        "stm_mu": "the authors' code",
        "max_chunk_pixels": "ours: bounds memory on large images",
        "encoder_batch_size": "ours: images per encoder call (speed)",
    }

    @classmethod
    def hyper_parameters(cls) -> Dict[str, object]:
        """``{name: default}`` of the constructor's keyword arguments (all but ``timer``), read from the
        signature so that command lines and framework configs never drift from it."""
        return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind == p.KEYWORD_ONLY and name != "timer"}

    @property
    def config(self) -> Dict[str, object]:
        """The hyper-parameters that decide the output (written into job manifests and records)."""
        return {
            "type": "SAMRefiner",
            "iterations": self.iterations,
            "use_point": self.use_point,
            "use_box": self.use_box,
            "use_mask": self.use_mask,
            "add_negative": self.add_negative,
            "margin": self.margin,
            "semantic_margin": self.semantic_margin,
            "gamma": self.gamma,
            "strength": self.strength,
            "gaussian": self.gaussian,
            "multimask_output": self.multimask_output,
            "distance": self.distance,
            "min_area": self.min_area,
            "stm_mu": self.stm_mu,
        }

    def to(self, device) -> "SAMRefiner":
        self.engine.to(device)
        return self

    # ------------------------------------------------------------------ public API
    def refine_batch(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                     probabilities: bool = False) -> List[RefineResult]:
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} mask arrays")
        for image, image_masks in zip(images, masks):
            check_image_and_masks(image, image_masks)
        with self.timer("encode"):
            embeddings = self.encode(images)
        return [self.refine_with_embedding(e, m, self.margin, probabilities=probabilities) for e, m in zip(embeddings, masks)]

    def refine_semantic(self, image: np.ndarray, masks: np.ndarray) -> RefineResult:
        """Refine semantic masks (one per class, each possibly several objects) with split-then-merge.

        Each mask is split into regions (:func:`split_then_merge`), every region is refined as an
        instance with ``semantic_margin``, and the refined regions of a mask are united again.
        Components under 5 pixels are not refined and not kept, as in the authors' code.

        Args:
            image: uint8 ``H x W x 3`` RGB.
            masks: bool ``C x H x W`` semantic masks.

        Returns:
            one refined mask per input mask; the IoU prediction of a mask is the mean over its regions.
        """
        check_image_and_masks(image, masks)
        with self.timer("encode"):
            embedding = self.encode([image])[0]
        regions, owners = [], []
        passed: Dict[int, str] = {}
        for index, mask in enumerate(masks):
            parts = split_then_merge(mask, mu=self.stm_mu) if mask.any() else []
            if not parts:
                passed[index] = PASS_EMPTY if not mask.any() else PASS_BELOW_MIN_AREA
            regions.extend(parts)
            owners.extend([index] * len(parts))
        output = masks.copy()
        ious = np.full(len(masks), np.nan, dtype=np.float32)
        if regions:
            refined = self.refine_with_embedding(embedding, np.stack(regions), self.semantic_margin)
            owners = np.asarray(owners)
            for index in np.unique(owners):
                mine = owners == index
                output[index] = refined.masks[mine].any(axis=0)
                ious[index] = float(np.nanmean(refined.iou_predictions[mine])) if np.isfinite(refined.iou_predictions[mine]).any() else np.nan
        return RefineResult(masks=output, iou_predictions=ious, passed_through=passed)

    # ------------------------------------------------------------------ internals
    def encode(self, images: Sequence[np.ndarray]) -> List[ImageEmbedding]:
        """The image embeddings the decoder is run on (one per uint8 ``H x W x 3`` image); callers that refine
        mask groups of an image separately (:meth:`refine_with_embedding`) encode through it too."""
        return self.engine.encode(images, batch_size=self.encoder_batch_size)

    def refine_with_embedding(self, embedding: ImageEmbedding, masks: np.ndarray, margin: float, *,
                              probabilities: bool = False) -> RefineResult:
        """Refine bool ``N x H x W`` masks of an already encoded image (see :class:`RefineResult`)."""
        count = masks.shape[0]
        output = masks.copy()
        ious = np.full(count, np.nan, dtype=np.float32)
        soft: Optional[List[Optional[WindowedMap]]] = [None] * count if probabilities else None
        areas = np.count_nonzero(masks, axis=(1, 2))
        passed = {int(i): PASS_EMPTY for i in np.flatnonzero(areas == 0)}
        passed.update({int(i): PASS_BELOW_MIN_AREA for i in np.flatnonzero((areas > 0) & (areas < self.min_area))})
        todo = np.asarray([i for i in range(count) if i not in passed], dtype=np.int64)
        if todo.size == 0:
            return RefineResult(output, ious, passed, soft)
        height, width = embedding.original_size
        similarity = None
        if self.use_box and margin > 0:
            if "similarity" not in embedding.cache:  # once per image, whatever the number of mask groups
                with self.timer("mine"):
                    embedding.cache["similarity"] = EmbeddingSimilarity(embedding.features, embedding.original_size)
            similarity = embedding.cache["similarity"]
        chunk = max(1, min(self.engine.decoder_chunk_size, self.max_chunk_pixels // (height * width)))
        for start in range(0, todo.size, chunk):
            indices = todo[start : start + chunk]
            # Consecutive masks are refined in place in the output (no whole-image copies).
            contiguous = indices[-1] - indices[0] + 1 == indices.size
            block = output[indices[0] : indices[-1] + 1] if contiguous else masks[indices]
            refined, refined_ious, sam_empty, last_logits = self._cascade(embedding, block, similarity, margin, probabilities,
                                                                          in_place=True)
            if refined is not block or not contiguous:
                output[indices] = refined
            ious[indices] = refined_ious
            passed.update({int(i): PASS_SAM_EMPTY for i in indices[sam_empty]})
            if probabilities:
                for slot, index in enumerate(indices):
                    if not sam_empty[slot]:
                        soft[index] = self._probability_window(embedding, last_logits[slot], masks[index], refined[slot])
        return RefineResult(output, ious, dict(sorted(passed.items())), soft)

    def _probability_window(self, embedding: ImageEmbedding, low_res_logits: torch.Tensor, coarse: np.ndarray,
                            refined: np.ndarray) -> WindowedMap:
        """σ(r) of one mask (SUM Sec. 3.2.3): the sigmoid of its last selected low-res logits upsampled to the
        original size, on the union of the coarse and the refined mask's boxes only."""
        x1, y1, x2, y2 = union_box(mask_box(coarse), mask_box(refined))
        logits = self.engine.upsample_logits_window(low_res_logits, embedding, (x1, y1, x2, y2))
        return WindowedMap(torch.sigmoid(logits).cpu().numpy().astype(np.float32), x1, y1)

    def _cascade(
        self, embedding: ImageEmbedding, coarse: np.ndarray, similarity: Optional[EmbeddingSimilarity], margin: float,
        keep_logits: bool = False, in_place: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[torch.Tensor]]:
        """Run the iterations on bool ``n x H x W`` non-empty masks (``in_place``: in ``coarse`` itself).

        A mask whose SAM output is empty keeps its previous mask and stops iterating. A mask whose output
        equals its input has converged: prompts are a function of the mask alone, so every further
        iteration would return it again; it stops iterating with the same result.

        Returns:
            bool ``n x H x W`` masks, float32 ``n`` IoU predictions, bool ``n`` "empty at the first iteration",
            and with ``keep_logits`` float32 ``n x m x m``: the low-res logits of the selected candidate that
            gave each returned mask (the last iteration's; a converged mask's last iteration is the one that
            reproduced it), else None.
        """
        current = coarse if in_place else coarse.copy()
        ious = np.full(len(coarse), np.nan, dtype=np.float32)
        empty_first = np.zeros(len(coarse), dtype=bool)
        last_logits = None
        active = np.arange(len(coarse))
        # Per mask a rectangle (x1, y1, x2, y2, inclusive) outside which it is False: postprocessing compares
        # and writes only there, never whole images.
        extents = masks_to_xyxy(coarse)
        for iteration in range(self.iterations):
            with self.timer("mine"):
                masks = current if active.size == len(current) else current[active]
                extents[active] = _tight_boxes(masks, extents[active])
                prompts = self._prompts(embedding, masks, similarity, margin, extents[active])
            with self.timer("decode"):
                logits, candidate_ious = self.engine.decode(embedding, multimask_output=self.multimask_output, **prompts)
            with self.timer("postprocess"):
                best = candidate_ious.argmax(dim=1)
                rows = torch.arange(len(best), device=best.device)
                selected = logits[rows, best]
                windows = self.engine.upsample_windows(selected, embedding)
                best_ious = candidate_ious[rows, best].cpu().numpy()
                keep = np.zeros(len(active), dtype=bool)  # non-empty and changed: iterate again
                nonempty = np.zeros(len(active), dtype=bool)
                for k, (index, (window, origin)) in enumerate(zip(active, windows)):
                    if window is None or not window.any():  # empty: keeps its previous mask, stops
                        empty_first[index] |= iteration == 0
                        continue
                    nonempty[k] = True
                    keep[k] = _replace_if_changed(current[index], extents[index], window, origin)
                    ious[index] = best_ious[k]
                if keep_logits:
                    if last_logits is None:
                        last_logits = selected.new_zeros((len(coarse),) + tuple(selected.shape[1:]))
                    last_logits[torch.from_numpy(active[nonempty]).to(selected.device)] = selected[torch.from_numpy(nonempty).to(selected.device)]
                active = active[keep]
            if active.size == 0:
                break
        return current, ious, empty_first, last_logits

    def prompts_for(self, embedding: ImageEmbedding, masks: np.ndarray) -> Dict[str, torch.Tensor]:
        """What one cascade iteration feeds the decoder for non-empty bool ``n x H x W`` masks of an encoded
        image, with tight boxes (no elastic box): keyword arguments of :meth:`SamEngine.decode`
        (``point_coords`` float32 ``n x P x 2`` and ``point_labels`` int64 ``n x P`` in original pixels,
        ``boxes`` float32 ``n x 4``, ``mask_inputs`` float32 ``n x 1 x m x m``; each only when switched on).

        Trainers of refiners call it so that a model is trained on exactly the prompts it is run with.
        """
        return self._prompts(embedding, masks, None, 0.0)

    def _prompts(
        self, embedding: ImageEmbedding, masks: np.ndarray, similarity: Optional[EmbeddingSimilarity], margin: float,
        tight: Optional[np.ndarray] = None,
    ) -> Dict[str, torch.Tensor]:
        """Decoder prompts for non-empty bool ``n x H x W`` masks (keyword arguments of ``SamEngine.decode``);
        ``tight``: their tight boxes when known (int64 ``n x 4``)."""
        tight = masks_to_xyxy(masks) if tight is None else tight
        depths = [interior_distance(mask, box, self.distance) for mask, box in zip(masks, tight)]
        prompts: Dict[str, torch.Tensor] = {}
        if self.use_point:
            coords, labels = point_prompts(masks, tight, depths, self.add_negative, self.distance)
            prompts["point_coords"] = torch.from_numpy(coords)
            prompts["point_labels"] = torch.from_numpy(labels)
        expanded = np.zeros(len(masks), dtype=bool)
        if self.use_box:
            boxes = tight
            if similarity is not None:
                boxes, expanded = elastic_boxes(tight, similarity.strips_near(masks, tight), margin, embedding.original_size)
            prompts["boxes"] = torch.from_numpy(boxes.astype(np.float32))
        if self.use_mask:
            crops = [mask[y1 : y2 + 1, x1 : x2 + 1] for mask, (x1, y1, x2, y2) in zip(masks, tight)]
            if self.gaussian == "binary":
                weights = [None] * len(crops)
            else:
                weights = [gaussian_weights(d, int(c.sum()), self.gamma, self.gaussian) for d, c in zip(depths, crops)]
            # The authors' code means amplitude 1 for masks whose box was expanded, but applies the flag
            # of the last mask to the whole batch; we apply it per mask.
            amplitude = np.where(expanded, 1.0, self.strength)
            prompts["mask_inputs"] = dense_mask_prompt(crops, weights, tight, amplitude, self.engine.mask_input_frame(embedding))
        return prompts


def _replace_if_changed(mask: np.ndarray, extent: np.ndarray, window: np.ndarray, origin: Tuple[int, int]) -> bool:
    """Make bool ``H x W`` ``mask`` (False outside the rectangle ``extent``) equal to ``window`` placed at
    ``origin`` and False elsewhere; update ``extent`` in place. Returns whether the mask changed."""
    x0, y0 = origin
    x1, y1 = min(int(extent[0]), x0), min(int(extent[1]), y0)
    x2 = max(int(extent[2]), x0 + window.shape[1] - 1)
    y2 = max(int(extent[3]), y0 + window.shape[0] - 1)
    new = np.zeros((y2 - y1 + 1, x2 - x1 + 1), dtype=bool)
    new[y0 - y1 : y0 - y1 + window.shape[0], x0 - x1 : x0 - x1 + window.shape[1]] = window
    region = mask[y1 : y2 + 1, x1 : x2 + 1]
    if np.array_equal(region, new):
        return False
    region[...] = new
    extent[:] = (x0, y0, x0 + window.shape[1] - 1, y0 + window.shape[0] - 1)
    return True


def _tight_boxes(masks: np.ndarray, extents: np.ndarray) -> np.ndarray:
    """int64 ``n x 4`` tight inclusive boxes of non-empty bool ``n x H x W`` masks, each False outside its
    rectangle in ``extents`` (``n x 4``): found by looking inside the rectangles only."""
    boxes = np.empty((len(masks), 4), dtype=np.int64)
    for i, (mask, (x1, y1, x2, y2)) in enumerate(zip(masks, extents)):
        inside = mask[y1 : y2 + 1, x1 : x2 + 1]
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        boxes[i] = (x1 + cols[0], y1 + rows[0], x1 + cols[-1], y1 + rows[-1])
    return boxes
