"""The raster-scan distance transform the authors' SAMRefiner code uses (``distance="raster"``).

Their ``extract_points`` calls FastGeodis' ``generalised_geodesic2d`` on a constant image with ``v = 1e10``,
``lamb = 0`` (purely spatial) and 2 iterations: a chamfer-style approximation of the Euclidean distance
transform (Criminisi et al., "GeoS: Geodesic Image Segmentation", ECCV 2008, Sec. 3). This module computes
the same values, float32 bit for bit, with the same scan structure:

- non-seed pixels start at ``1e10`` and seed pixels at 0;
- each iteration runs four passes: top to bottom, bottom to top, left to right, right to left; a pass
  updates one row (or column) at a time from the previous one only, each pixel taking the minimum of
  itself and its three neighbours there plus 1 (straight) or float32 ``sqrt(2)`` (diagonal);
- sums are float32, one addition per step, as there (``lamb = 0`` zeroes the image term exactly).

Pixels outside the array do not exist (they are neither seeds nor paths). The cost is a Python loop over
rows and columns, vectorised along them and over a leading batch axis, so batches of masks share it.
"""

from __future__ import annotations

import numpy as np

RASTER_ITERATIONS = 2  # the authors' ``iterations``
UNREACHED = np.float32(1e10)  # FastGeodis' ``v``: the start value of non-seed pixels
STRAIGHT = np.float32(1.0)
DIAGONAL = np.float32(np.sqrt(2.0))  # float(sqrt(2.)) as in FastGeodis' local distances


def raster_distance(nonseed: np.ndarray, iterations: int = RASTER_ITERATIONS) -> np.ndarray:
    """float32 ``... x H x W`` raster distance of each nonzero pixel of ``nonseed`` to the zero pixels.

    Equals ``FastGeodis.generalised_geodesic2d(ones, nonseed, 1e10, 0.0, iterations)`` on each ``H x W``
    slice; zero pixels get 0, and pixels no path reaches keep ``1e10`` (a slice without zeros).
    """
    distance = np.where(nonseed.astype(bool), UNREACHED, np.float32(0.0))
    for _ in range(iterations):
        _scan_both_ways(distance)
        transposed = np.ascontiguousarray(np.swapaxes(distance, -1, -2))  # columns as rows: contiguous scans
        _scan_both_ways(transposed)
        distance = np.ascontiguousarray(np.swapaxes(transposed, -1, -2))
    return distance


def _scan_both_ways(distance: np.ndarray) -> None:
    """One top-to-bottom and one bottom-to-top pass over axis -2 of float32 ``distance``, in place."""
    height = distance.shape[-2]
    for row, previous in [(r, r - 1) for r in range(1, height)] + [(r, r + 1) for r in range(height - 2, -1, -1)]:
        _relax_row(distance[..., row, :], distance[..., previous, :])


def _relax_row(row: np.ndarray, previous: np.ndarray) -> None:
    """``row[x] = min(row[x], previous[x] + 1, previous[x -+ 1] + sqrt(2))`` in place (float32)."""
    np.minimum(row, previous + STRAIGHT, out=row)
    diagonal = previous + DIAGONAL
    np.minimum(row[..., 1:], diagonal[..., :-1], out=row[..., 1:])
    np.minimum(row[..., :-1], diagonal[..., 1:], out=row[..., :-1])
