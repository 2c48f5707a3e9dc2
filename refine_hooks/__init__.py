"""refine-hooks: SAM-based mask refinement for any instance segmenter.

The core (``sam``, ``prompts``, ``refiners``, ``data``, ``jobs``, ``evaluation``) imports no detection
framework; ``refine_hooks.mmdet`` and ``refine_hooks.detectron2`` are thin adapters imported on demand.
"""

__version__ = "0.1.0"
