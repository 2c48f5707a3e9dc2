"""Image loading: every file kind arrives as uint8 RGB H x W x 3; failures name the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refine_hooks.data.images import ImageReadError, load_image, read_image_size


def _check(path, expected_rgb):
    array = load_image(path)
    assert array.dtype == np.uint8 and array.shape == expected_rgb.shape
    assert np.array_equal(array, expected_rgb)
    assert read_image_size(path) == array.shape[:2]


def test_gray_rgba_palette_and_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    _check(tmp_path / "gray.png", np.repeat(gray[:, :, None], 3, axis=2))

    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    _check(tmp_path / "rgba.png", rgba[:, :, :3])

    deep = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    _check(tmp_path / "deep.png", np.repeat((deep >> 8).astype(np.uint8)[:, :, None], 3, axis=2))

    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(tmp_path / "palette.png")
    _check(tmp_path / "palette.png", np.asarray(palette.convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:5, :10] = 255  # a bright top-left corner, to see where it goes
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.png", exif=exif)
    loaded = load_image(tmp_path / "rotated.png")
    assert loaded.shape == (30, 20, 3) and read_image_size(tmp_path / "rotated.png") == (30, 20)
    assert np.array_equal(loaded, np.rot90(rgb, k=-1))


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="absent.jpg.*does not exist"):
        load_image(tmp_path / "absent.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    for reader in (load_image, read_image_size):
        with pytest.raises(ImageReadError, match="junk.jpg"):
            reader(tmp_path / "junk.jpg")
