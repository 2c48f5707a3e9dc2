"""Fixtures of the job tests: a generated COCO-format dataset and a tiny random SAM checkpoint."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from pseudo_label_data import make_coco_dataset
from refine_hooks.sam import save_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("sam") / "tiny_sam.pth", seed=0))


@pytest.fixture()
def coco_dataset(tmp_path) -> Dict[str, Any]:
    data = make_coco_dataset(str(tmp_path))
    return {"root": str(tmp_path), "images": str(tmp_path / "images"), "ann": str(tmp_path / "pseudo.json"), "data": data}
