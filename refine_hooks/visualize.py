"""Overlays that show coarse and refined mask outlines on an image."""

from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np

COARSE_COLOR = (255, 64, 64)  # red
REFINED_COLOR = (64, 255, 64)  # green


def draw_outlines(image: np.ndarray, masks: np.ndarray, color: Tuple[int, int, int], thickness: int = 1) -> np.ndarray:
    """Copy of uint8 ``H x W x 3`` RGB ``image`` with the outline of each bool ``N x H x W`` mask drawn in ``color``."""
    canvas = np.ascontiguousarray(image.copy())
    for mask in masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, color, thickness)
    return canvas


def label(image: np.ndarray, text: str, color: Tuple[int, int, int]) -> np.ndarray:
    """Write ``text`` in the top-left corner of a uint8 RGB image, on a dark band so it stays legible."""
    cv2.rectangle(image, (0, 0), (8 * len(text) + 8, 18), (0, 0, 0), -1)
    cv2.putText(image, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return image


def coarse_vs_refined(image: np.ndarray, coarse: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """uint8 ``H x 2W x 3``: coarse outlines (red) on the left, refined (green) on the right."""
    left = label(draw_outlines(image, coarse, COARSE_COLOR), "coarse", COARSE_COLOR)
    right = label(draw_outlines(image, refined, REFINED_COLOR), "refined", REFINED_COLOR)
    return np.concatenate([left, right], axis=1)


def stack_rows(rows: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Stack uint8 RGB images vertically, padded to the widest, with a white gap between them."""
    width = max(row.shape[1] for row in rows)
    padded = []
    for row in rows:
        pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
        padded.append(np.concatenate([row, pad], axis=1))
        padded.append(np.full((gap, width, 3), 255, np.uint8))
    return np.concatenate(padded[:-1], axis=0)
