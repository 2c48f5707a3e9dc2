"""Context-aware elastic box prompts (SAMRefiner, Sec. 3.2).

The tight box of a coarse mask is often too small (false negatives near the border). Each side may move
out by a strip of ``min(0.1 * side length, 10)`` pixels when more than ``margin`` (λ) of the strip is
similar to the object: image-embedding cosine similarity to the mask's mean embedding above 0.5.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

SIMILARITY_THRESHOLD = 0.5
STRIP_FRACTION = 0.1
STRIP_MAX_PIXELS = 10


class EmbeddingSimilarity:
    """Cosine similarity between the pixels of an image and the mean embedding of a mask.

    Following the authors, the embedding's valid (unpadded) area is bilinearly resized to the original
    image size and L2-normalised per pixel. We never materialise that ``C x H x W`` tensor: bilinear
    resizing is linear, so ``resize(E) . q == resize(E . q)``, and the per-pixel norm of ``resize(E)`` is
    computed once per image, a few channels at a time.

    Args:
        features: float ``1 x C x h x w`` image embedding.
        original_size: ``(H, W)`` of the image.
        channel_chunk: channels resized at once when computing the norm (bounds memory).
    """

    def __init__(self, features: torch.Tensor, original_size: Tuple[int, int], channel_chunk: int = 16):
        height, width = original_size
        embed_h, embed_w = features.shape[-2:]
        # The authors' valid-area rule (int truncation), also used for the mask's query embedding.
        if height >= width:
            valid = (embed_h, int(embed_h * width / height))
        else:
            valid = (int(embed_w * height / width), embed_w)
        self.valid_features = features[0, :, : valid[0], : valid[1]].float()  # C x hv x wv
        self.original_size = (height, width)
        squared = torch.zeros(original_size, dtype=torch.float32, device=features.device)
        for start in range(0, self.valid_features.shape[0], channel_chunk):
            part = self.valid_features[None, start : start + channel_chunk]
            squared += F.interpolate(part, original_size, mode="bilinear", align_corners=False)[0].pow(2).sum(0)
        self.norm = squared.sqrt()  # H x W

    def similar(self, masks: torch.Tensor) -> torch.Tensor:
        """bool ``N x H x W``: pixels whose similarity to each mask's mean embedding exceeds 0.5.

        Args:
            masks: bool ``N x H x W`` on the features' device. A mask that vanishes at embedding
                resolution has no mean embedding; nothing is similar to it (the authors' NaN).
        """
        valid_h, valid_w = self.valid_features.shape[-2:]
        small = F.interpolate(masks[:, None].float(), (valid_h, valid_w), mode="nearest")[:, 0]  # N x hv x wv
        counts = small.sum(dim=(1, 2))
        query = torch.einsum("nhw,chw->nc", small, self.valid_features) / counts.clamp(min=1)[:, None]
        query = query / query.norm(dim=1, keepdim=True).clamp(min=1e-12)
        projected = torch.einsum("nc,chw->nhw", query, self.valid_features)
        numerator = F.interpolate(projected[:, None], self.original_size, mode="bilinear", align_corners=False)[:, 0]
        similar = numerator > SIMILARITY_THRESHOLD * self.norm
        similar[counts == 0] = False
        return similar


def elastic_boxes(boxes: np.ndarray, similar: np.ndarray, margin: float) -> Tuple[np.ndarray, np.ndarray]:
    """Grow tight boxes side by side where the context strip is similar to the object.

    Args:
        boxes: int ``N x 4`` tight boxes ``x1, y1, x2, y2`` (x2, y2 inclusive, as the authors').
        similar: bool ``N x H x W`` from :meth:`EmbeddingSimilarity.similar`.
        margin: λ; a side moves out when similar pixels / strip area > λ.

    Returns:
        int64 ``N x 4`` boxes and bool ``N`` telling which boxes grew. Each side is tried once, against
        the tight box, and only when the new coordinate stays inside the image (strictly > 0 on the
        left and top, < W or < H on the right and bottom), as in the authors' code.
    """
    height, width = similar.shape[1:]
    grown = boxes.astype(np.int64).copy()
    expanded = np.zeros(len(boxes), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64)):
        box_w, box_h = x2 - x1, y2 - y1
        if box_w <= 0 or box_h <= 0:
            continue
        step_w = min(box_w * STRIP_FRACTION, STRIP_MAX_PIXELS)
        step_h = min(box_h * STRIP_FRACTION, STRIP_MAX_PIXELS)
        sim = similar[i]
        new_x1, new_x2 = int(x1 - step_w), int(x2 + step_w)
        new_y1, new_y2 = int(y1 - step_h), int(y2 + step_h)
        strips = (
            (0, new_x1, 0 < new_x1 < x1, lambda: sim[y1:y2, new_x1:x1]),
            (2, new_x2, x2 < new_x2 < width, lambda: sim[y1:y2, x2:new_x2]),
            (1, new_y1, 0 < new_y1 < y1, lambda: sim[new_y1:y1, x1:x2]),
            (3, new_y2, y2 < new_y2 < height, lambda: sim[y2:new_y2, x1:x2]),
        )
        for side, value, inside, strip in strips:
            if not inside:
                continue
            region = strip()
            if region.size and region.sum() / region.size > margin:
                grown[i, side] = value
                expanded[i] = True
    return grown, expanded
