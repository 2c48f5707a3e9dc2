"""Small utilities shared by the core, the jobs, the trainers and the tools: file hashes, a cheap look at
whether a file can be a checkpoint, flattened settings."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Any, Dict, Optional


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def not_a_checkpoint(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` cannot be a PyTorch / pickle checkpoint, or None when it may be one.

    Reads a few bytes, not the file: ``torch.save`` writes a zip archive (complete archives end with a
    central directory, which a truncated download lacks) or, in its legacy format and for Detectron2's
    ``.pkl`` weights, a pickle of protocol 2 or later, whose first byte is 0x80. Frameworks load
    checkpoints only after building the model and the data; this lets a tool refuse a wrong file first."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head == b"PK":
        return "a zip archive without its end (a truncated download?), not a whole checkpoint"
    if head[:1] != b"\x80":
        return "neither a PyTorch archive nor a pickle: not a checkpoint"
    return None


def flatten_settings(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, values as JSON gives them back (tuples become lists), so that a
    manifest read from disk and one built in memory compare key by key."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return flat
