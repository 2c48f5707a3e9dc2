"""Two documented fixes that let mmengine 0.10.7 run in this project's environment, applied when
``refine_hooks.mmdet`` is imported, through mmengine's own extension points or its module attributes,
never by editing site-packages.

1. Checkpoints. mmengine 0.10.7 reads local checkpoints with ``torch.load(filename, map_location=...)``.
   torch >= 2.6 made ``weights_only=True`` the default, and mmengine checkpoints carry non-tensor objects
   (the message hub, numpy scalars, config text), so loading them fails with ``UnpicklingError``.
   :func:`install_local_checkpoint_loader` re-registers the loader for local paths with
   ``CheckpointLoader.register_scheme(..., force=True)`` and ``weights_only=False``, which is what mmengine
   did with torch < 2.6 and what its later releases do. As before torch 2.6, only load checkpoints you
   trust: unpickling can run code.

2. ``mmdet::`` configs. mmengine resolves ``_base_ = 'mmdet::...'`` with ``is_installed`` /
   ``get_installed_path``, which import ``pkg_resources``; setuptools >= 82 (torch pulls in a recent one)
   no longer ships it. :func:`install_package_lookup` gives mmengine equivalents built on
   ``importlib.metadata`` when ``pkg_resources`` is missing. A config is parsed before its
   ``custom_imports`` run, so this helps code that imports ``refine_hooks.mmdet`` first (our tools and
   tests); for mmdet's own ``tools/test.py``, ``tools/install_mmdet.sh`` keeps a setuptools that still has
   ``pkg_resources``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_from_local(filename: str, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=False`` spelled out."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return torch.load(filename, map_location=map_location, weights_only=False)


def install_local_checkpoint_loader() -> None:
    """Make :func:`load_from_local` mmengine's loader for paths without a scheme (idempotent)."""
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)


def is_installed(package: str) -> bool:
    """mmengine's ``is_installed`` without ``pkg_resources``."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec(package) is not None


def get_installed_path(package: str) -> str:
    """mmengine's ``get_installed_path`` (the directory of an installed package) without ``pkg_resources``."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise
        return osp.dirname(spec.origin)
    location = str(dist.locate_file(""))
    path = osp.join(location, package)
    if osp.exists(path):
        return path
    top_level = (dist.read_text("top_level.txt") or "").split()
    if not top_level:
        raise ValueError(f"can not infer the module name of {package}")
    return osp.join(location, top_level[0])


def install_package_lookup() -> None:
    """Give mmengine the lookups above where it would import the missing ``pkg_resources``."""
    if importlib.util.find_spec("pkg_resources") is not None:
        return
    import mmengine.config.config as config_module
    import mmengine.utils as utils
    import mmengine.utils.package_utils as package_utils

    for module in (package_utils, utils, config_module):
        module.is_installed = is_installed
        module.get_installed_path = get_installed_path
    try:
        import mmengine.hub.hub as hub_module

        hub_module.get_installed_path = get_installed_path
    except ImportError:  # pragma: no cover
        pass
