import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shapes import make_shapes_coco  # noqa: E402

from refine_hooks.sam import save_tiny_checkpoint  # noqa: E402
from refine_hooks.training.phoenix import TrainingData, train_refiner  # noqa: E402
from training_helpers import quick_config  # noqa: E402



@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """``(annotation file, image root)`` of 6 generated 96x112 scenes."""
    root = str(tmp_path_factory.mktemp("shapes"))
    return make_shapes_coco(root, num_images=6, size=(96, 112), seed=5), root


@pytest.fixture(scope="session")
def tiny_sam_file(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("sam") / "tiny.pth"))


@pytest.fixture(scope="session")
def other_sam_file(tmp_path_factory):
    """A tiny SAM with other weights (another seed): another fingerprint."""
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("sam_other") / "tiny_other.pth", seed=1))


@pytest.fixture(scope="session")
def refiner_file(tmp_path_factory, shapes_data, tiny_sam_file):
    """A refiner checkpoint written by the trainer (3 iterations of AMP + CMRL on the tiny SAM)."""
    out = str(tmp_path_factory.mktemp("refiner") / "phoenix_tiny.pth")
    train_refiner(TrainingData(coco=[shapes_data]), out, quick_config(), model_type="tiny", checkpoint=tiny_sam_file,
                  workers=0, progress=False, log=lambda message: None)
    return out
