"""Puts tests/ on sys.path (pytest does so for a conftest outside a package), so that the adapters'
tests share ``tiny_coco``."""
