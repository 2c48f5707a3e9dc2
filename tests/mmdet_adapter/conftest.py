import pytest

from mmdet_test_utils import make_tiny_coco


@pytest.fixture(scope="session")
def coco(tmp_path_factory):
    """A tiny labeled COCO set: ``(root, annotation file)``."""
    root = str(tmp_path_factory.mktemp("tiny_coco"))
    return root, make_tiny_coco(root, num_images=3, seed=0)


@pytest.fixture(scope="session")
def unlabeled(tmp_path_factory):
    """Unlabeled images with an image-info file (no annotations): ``(root, image info file)``."""
    root = str(tmp_path_factory.mktemp("tiny_unlabeled"))
    return root, make_tiny_coco(root, num_images=2, seed=1, prefix="unl", with_annotations=False)
