"""The one rule of ``score_thr`` / ``--score-thr``: which detections or records get refined.

A detection (framework adapters) or record (pseudo-label job) is refined when its score is a number at
least the threshold. A missing score (no ``score`` key, ``"score": null``, a detector output without
scores) or a NaN score is *unknown*: it meets the threshold only when the threshold is 0 or below, so the
default threshold 0 refines everything, and any positive threshold passes unscored records through
(the job's reason: ``no_score``) instead of guessing that they are confident.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np


def meets_score_thr(scores: np.ndarray, score_thr: float) -> np.ndarray:
    """bool ``N``: which scores meet the threshold (NaN marks an unknown score, see the module docstring).

    Args:
        scores: float ``N``, NaN where a detection has no score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    unknown = np.isnan(scores)
    with np.errstate(invalid="ignore"):
        known_ok = scores >= score_thr
    return np.where(unknown, score_thr <= 0, known_ok)


def record_score(record: Any) -> Optional[float]:
    """A record's ``score`` as a float, NaN when unknown (missing, null or NaN); None when it is there but
    not a number (a string, a list...), which makes the record invalid."""
    value = record.get("score") if isinstance(record, dict) else None
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
