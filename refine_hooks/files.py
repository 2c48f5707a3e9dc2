"""Small utilities shared by the core, the jobs and the trainers: file hashes, flattened settings."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
