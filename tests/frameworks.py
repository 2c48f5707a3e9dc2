"""The optional frameworks some test folders need, and whether this run requires them.

Detectron2 (with Mask2Former) and MMDetection are installed by their own scripts, so their tests skip where
they are missing, except when ``REFINE_HOOKS_REQUIRE`` names them (CI sets ``detectron2,mmdet``): then a
framework that does not import fails its tests, and so does any skip in its test folder (tests/conftest.py),
so a broken install cannot pass as a skipped one.

    REFINE_HOOKS_REQUIRE=detectron2,mmdet python -m pytest tests
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import FrozenSet, Optional, Tuple

import pytest

REQUIRE_VARIABLE = "REFINE_HOOKS_REQUIRE"
TESTS = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Framework:
    """An optional framework: what importing it means, how to install it, the test folder that needs it."""

    modules: Tuple[str, ...]
    install: str
    tests_dir: str


FRAMEWORKS = {
    "detectron2": Framework(("detectron2", "detectron2._C", "mask2former"),
                            "bash tools/install_detectron2.sh .venv/bin/python (Detectron2 and Mask2Former)",
                            "detectron2_adapter"),
    "mmdet": Framework(("mmcv", "mmcv.ops", "mmengine", "mmdet"), "bash tools/install_mmdet.sh .venv/bin/python",
                       "mmdet_adapter"),
}


def required() -> FrozenSet[str]:
    """The frameworks ``REFINE_HOOKS_REQUIRE`` names (comma-separated); raises ``pytest.UsageError`` on others."""
    names = frozenset(name.strip() for name in os.environ.get(REQUIRE_VARIABLE, "").split(",") if name.strip())
    unknown = sorted(names - set(FRAMEWORKS))
    if unknown:
        raise pytest.UsageError(f"{REQUIRE_VARIABLE} names unknown frameworks {unknown}; known: {sorted(FRAMEWORKS)}")
    return names


def import_framework(name: str, *modules: str) -> ModuleType:
    """Import ``modules`` (default: all of the framework's) and return the first; when one does not import,
    skip the calling test module, or fail it when the framework is required. Call at module level."""
    framework = FRAMEWORKS[name]
    imported = []
    for module in modules or framework.modules:
        try:
            imported.append(importlib.import_module(module))
            continue
        except Exception as error:  # a broken build raises OSError / RuntimeError as well as ImportError
            problem = f"{module} does not import ({type(error).__name__}: {error}); install: {framework.install}"
        if name in required():
            pytest.fail(f"{REQUIRE_VARIABLE} requires {name}, but {problem}", pytrace=False)
        pytest.skip(f"{name} not available: {problem}", allow_module_level=True)
    return imported[0]


def required_framework_of(path: Path) -> Optional[str]:
    """The required framework whose test folder holds ``path``, or None."""
    path = Path(path).resolve()
    for name in required():
        if (TESTS / FRAMEWORKS[name].tests_dir) in (path, *path.parents):
            return name
    return None
