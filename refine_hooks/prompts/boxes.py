"""Context-aware elastic box prompts (SAMRefiner, Sec. 3.2).

The tight box of a coarse mask is often too small (false negatives near the border). Each side may move
out by a strip of ``min(0.1 * side length, 10)`` pixels when more than ``margin`` (λ) of the strip is
similar to the object: image-embedding cosine similarity to the mask's mean embedding above 0.5.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np
import torch

from ..resize import mapped_norm, resize_map

SIMILARITY_THRESHOLD = 0.5
STRIP_FRACTION = 0.1
STRIP_MAX_PIXELS = 10


class EmbeddingSimilarity:
    """Cosine similarity between the pixels of an image and the mean embedding of a mask.

    Following the authors, the embedding's valid (unpadded) area is bilinearly resized to the original
    image size and L2-normalised per pixel. We never materialise that ``C x H x W`` tensor: bilinear
    resizing is linear, so ``resize(E) . q == resize(E . q)``, and the per-pixel norm of ``resize(E)`` is
    computed once per image from Gram products of neighbouring embedding cells
    (:func:`refine_hooks.resize.mapped_norm`, float64: ~15x faster than resizing 256 channels and closer
    to the exact norm); similarities are computed only near each mask's box.

    Args:
        features: float ``1 x C x h x w`` image embedding.
        original_size: ``(H, W)`` of the image.
        max_floats: bound on the float64 temporaries of the norm's output stage.
    """

    def __init__(self, features: torch.Tensor, original_size: Tuple[int, int], max_floats: int = 1 << 23):
        height, width = original_size
        embed_h, embed_w = features.shape[-2:]
        # The authors' valid-area rule (int truncation), also used for the mask's query embedding.
        if height >= width:
            valid = (embed_h, int(embed_h * width / height))
        else:
            valid = (int(embed_w * height / width), embed_w)
        self.valid_features = features[0, :, : valid[0], : valid[1]].float()  # C x hv x wv
        self.original_size = (height, width)
        self.rows, self.cols = resize_map(valid, original_size, features.device)
        self.norm = mapped_norm(self.valid_features, self.rows, self.cols, max_floats)  # float32 H x W
        # F.interpolate(mode="nearest") reads source index floor(i * in / out).
        self.nearest_rows = (torch.arange(valid[0]) * height / valid[0]).floor().long().clamp(max=height - 1).numpy()
        self.nearest_cols = (torch.arange(valid[1]) * width / valid[1]).floor().long().clamp(max=width - 1).numpy()

    def query(self, masks: np.ndarray) -> torch.Tensor:
        """float32 ``N x C`` unit mean embeddings of bool ``N x H x W`` masks, resized (nearest) to the
        valid embedding size; a row of zeros for a mask that vanishes there (the authors' NaN)."""
        small = masks[:, self.nearest_rows][:, :, self.nearest_cols]
        small = torch.from_numpy(small).to(self.valid_features.device).float()
        counts = small.sum(dim=(1, 2))
        query = torch.einsum("nhw,chw->nc", small, self.valid_features) / counts.clamp(min=1)[:, None]
        query = query / query.norm(dim=1, keepdim=True).clamp(min=1e-12)
        query[counts == 0] = 0
        return query

    def similar_near(self, masks: np.ndarray, boxes: np.ndarray, reach: int = STRIP_MAX_PIXELS) -> List[Window]:
        """Which pixels within ``reach`` of each box are similar (cosine > 0.5) to its mask.

        Args:
            masks: bool ``N x H x W``; boxes: int ``N x 4`` their tight inclusive boxes.

        Returns:
            per mask, a bool window of the image and its top-left ``(x0, y0)``.
        """
        height, width = self.original_size
        windows = []
        for query, (x1, y1, x2, y2) in zip(self.query(masks), boxes.astype(np.int64)):
            top, bottom = max(0, y1 - reach), min(height - 1, y2 + reach)
            left, right = max(0, x1 - reach), min(width - 1, x2 + reach)
            projected = torch.einsum("c,chw->hw", query, self.valid_features)
            numerator = self.rows.apply(projected, 0, 0, slice(top, bottom + 1))
            numerator = self.cols.apply(numerator, 1, 0, slice(left, right + 1))
            similar = numerator > SIMILARITY_THRESHOLD * self.norm[top : bottom + 1, left : right + 1]
            windows.append(Window(similar.cpu().numpy(), (left, top)))
        return windows


    def strips_near(self, masks: np.ndarray, boxes: np.ndarray) -> List["SimilarityOnDemand"]:
        """Like :meth:`similar_near`, but each mask's similarity is computed only on the regions asked for
        (:func:`elastic_boxes` reads at most 4 strips), with the same values there."""
        return [SimilarityOnDemand(self, torch.einsum("c,chw->hw", query, self.valid_features)) for query in self.query(masks)]


class SimilarityOnDemand:
    """Which pixels are similar to one mask, computed per region on demand (a :class:`Window` stand-in).

    Args:
        similarity: the image's :class:`EmbeddingSimilarity`.
        projected: float ``hv x wv``, the valid embedding projected on the mask's query.
    """

    def __init__(self, similarity: EmbeddingSimilarity, projected: torch.Tensor):
        self.similarity = similarity
        self.projected = projected

    def region(self, y_from: int, y_to: int, x_from: int, x_to: int) -> np.ndarray:
        """bool, the image slice ``[y_from:y_to, x_from:x_to]``; each value as :meth:`EmbeddingSimilarity.similar_near`'s."""
        numerator = self.similarity.rows.apply(self.projected, 0, 0, slice(y_from, y_to))
        numerator = self.similarity.cols.apply(numerator, 1, 0, slice(x_from, x_to))
        return (numerator > SIMILARITY_THRESHOLD * self.similarity.norm[y_from:y_to, x_from:x_to]).cpu().numpy()


@dataclasses.dataclass
class Window:
    """A bool map over part of the image: ``values[y - y0, x - x0]`` is pixel ``(x, y)``."""

    values: np.ndarray
    origin: Tuple[int, int]

    def region(self, y_from: int, y_to: int, x_from: int, x_to: int) -> np.ndarray:
        """The image slice ``[y_from:y_to, x_from:x_to]`` (inside the window)."""
        x0, y0 = self.origin
        return self.values[y_from - y0 : y_to - y0, x_from - x0 : x_to - x0]


def elastic_boxes(boxes: np.ndarray, similar: Sequence, margin: float, image_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Grow tight boxes side by side where the context strip is similar to the object.

    Args:
        boxes: int ``N x 4`` tight boxes ``x1, y1, x2, y2`` (x2, y2 inclusive, as the authors').
        similar: per box, the :meth:`EmbeddingSimilarity.similar_near` window (or a
            :meth:`EmbeddingSimilarity.strips_near` entry: anything with ``region(y_from, y_to, x_from, x_to)``).
        margin: λ; a side moves out when similar pixels / strip area > λ.
        image_size: ``(H, W)``.

    Returns:
        int64 ``N x 4`` boxes and bool ``N`` telling which boxes grew. Each side is tried once, against
        the tight box, and only when the new coordinate stays inside the image (strictly > 0 on the
        left and top, < W or < H on the right and bottom), as in the authors' code. The right and bottom
        strips start at the box's own last column/row, also as there.
    """
    height, width = image_size
    grown = boxes.astype(np.int64).copy()
    expanded = np.zeros(len(boxes), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64)):
        box_w, box_h = x2 - x1, y2 - y1
        if box_w <= 0 or box_h <= 0:
            continue
        step_w = min(box_w * STRIP_FRACTION, STRIP_MAX_PIXELS)
        step_h = min(box_h * STRIP_FRACTION, STRIP_MAX_PIXELS)
        new_x1, new_x2 = int(x1 - step_w), int(x2 + step_w)
        new_y1, new_y2 = int(y1 - step_h), int(y2 + step_h)
        strips = (
            (0, new_x1, 0 < new_x1 < x1, (y1, y2, new_x1, x1)),
            (2, new_x2, x2 < new_x2 < width, (y1, y2, x2, new_x2)),
            (1, new_y1, 0 < new_y1 < y1, (new_y1, y1, x1, x2)),
            (3, new_y2, y2 < new_y2 < height, (y2, new_y2, x1, x2)),
        )
        for side, value, inside, bounds in strips:
            if not inside:
                continue
            region = similar[i].region(*bounds)
            if region.size and region.sum() / region.size > margin:
                grown[i, side] = value
                expanded[i] = True
    return grown, expanded
