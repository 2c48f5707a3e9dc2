"""Dataset-scale refinement of pseudo-label files: sharded, resumable, multi-rank.

Entry point: :func:`refine_annotation_file` (``tools/refine_pseudo_labels.py`` is its command line).
"""

from .options import JobOptions
from .plan import JobInputError
from .run import RefinerUnavailableError, build_job_refiner, refine_annotation_file
from .shards import WorkDirMismatchError, work_dir_for
from .summary import Summary, summary_path

__all__ = [
    "JobInputError",
    "JobOptions",
    "RefinerUnavailableError",
    "Summary",
    "WorkDirMismatchError",
    "build_job_refiner",
    "refine_annotation_file",
    "summary_path",
    "work_dir_for",
]
