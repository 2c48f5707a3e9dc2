import numpy as np
import pytest

from refine_hooks.sam import SamEngine, build_tiny_sam


@pytest.fixture(scope="session")
def tiny_sam():
    return build_tiny_sam(seed=0)


@pytest.fixture()
def engine(tiny_sam):
    return SamEngine(tiny_sam, device="cpu", decoder_chunk_size=64)


@pytest.fixture(scope="session")
def scene():
    """A 90x120 textured image and 6 masks of assorted shapes (one empty, one touching the border)."""
    rng = np.random.RandomState(0)
    image = (rng.rand(90, 120, 3) * 255).astype(np.uint8)
    masks = np.zeros((6, 90, 120), dtype=bool)
    masks[0, 10:40, 10:50] = True
    masks[1, 50:85, 60:115] = True
    masks[1, 60:70, 70:80] = False  # a hole
    yy, xx = np.mgrid[:90, :120]
    masks[2] = (yy - 45) ** 2 + (xx - 30) ** 2 < 15**2
    masks[3, 0:20, 100:120] = True  # touches the border
    # masks[4] stays empty
    masks[5, 30:33, 80:83] = True  # tiny
    return image, masks
