"""Fixtures shared by the Detectron2 tests (Detectron2 is imported inside them: these modules skip or fail
through ``frameworks.import_framework`` before any fixture runs)."""

import os

import pytest

from refine_hooks.sam import save_tiny_checkpoint
from tiny_coco import make_tiny_coco


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A registered 3-image COCO dataset (category ids 3 and 7): ``(name, json file)``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    root = str(tmp_path_factory.mktemp("d2_coco"))
    json_file = make_tiny_coco(root, num_images=3, seed=0)
    name = f"refine_hooks_tiny_{os.getpid()}"
    register_coco_instances(name, {}, json_file, os.path.join(root, "images"))
    yield name, json_file
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory):
    """A tiny random SAM checkpoint file (``model_type="tiny"``)."""
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("sam") / "tiny_sam.pth"))
