"""Puts tests/ on sys.path (pytest does so for a conftest outside a package), so that the adapters'
tests share ``tiny_coco``.

Because tests/ is on sys.path, no folder here may be named like a package the code imports: a
``tests/detectron2`` folder would be imported as ``detectron2`` (an empty namespace package) wherever
Detectron2 is not installed. Hence ``detectron2_adapter`` and ``mmdet_adapter``.
"""
