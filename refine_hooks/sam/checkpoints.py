"""Find, download and verify official checkpoints in a local cache."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .registry import ModelSpec

CACHE_ENV = "REFINE_HOOKS_CACHE"


class CheckpointUnavailableError(RuntimeError):
    """The checkpoint is neither cached nor downloadable; the message says which file to put where."""


def load_tensors(path: Path, refusal: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU. A file that is not one (truncated, not a torch file,
    holding more than tensors) raises a one-line ``ValueError``: ``refusal`` (which names the file) and the
    first sentence of torch's reason, instead of torch's many lines."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - zip, pickle, EOF and weights_only errors all mean "unreadable"
        reason = (str(error).strip().splitlines() or [""])[0]
        reason = reason.split(". ")[0][:200]
        raise ValueError(f"{refusal}: {type(error).__name__}: {reason}") from None


def cache_dir() -> Path:
    """``$REFINE_HOOKS_CACHE`` or ``~/.cache/refine_hooks``; checkpoints go in its ``checkpoints/``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "refine_hooks")
    return Path(root) / "checkpoints"


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def ensure_checkpoint(spec: ModelSpec, *, download: bool = True) -> Path:
    """Path of the verified official checkpoint of ``spec``, downloading it into the cache on first use.

    A cached file is trusted after its first verification (a ``.md5ok`` marker beside it), so later runs
    do not re-hash gigabytes. Raises :class:`CheckpointUnavailableError` when the file is missing and
    cannot be downloaded, and ``ValueError`` when a file fails its checksum.
    """
    if spec.url is None:
        raise CheckpointUnavailableError(f"model {spec.name!r} has no official checkpoint: pass --checkpoint PATH")
    target = cache_dir() / spec.filename
    marker = target.with_suffix(target.suffix + ".md5ok")
    if target.exists():
        if not marker.exists():
            _verify(target, spec)
            marker.write_text(spec.md5 + "\n")
        return target
    if not download:
        raise CheckpointUnavailableError(_offline_message(spec, target, "downloads are disabled"))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(spec.url, target)
    except (urllib.error.URLError, OSError) as error:
        raise CheckpointUnavailableError(_offline_message(spec, target, str(error))) from error
    _verify(target, spec)
    marker.write_text(spec.md5 + "\n")
    return target


def _verify(path: Path, spec: ModelSpec) -> None:
    actual = file_md5(path)
    if actual != spec.md5:
        raise ValueError(
            f"{path} has md5 {actual}, but the official {spec.name} checkpoint has {spec.md5}: "
            f"delete it and download {spec.url} again"
        )


def _offline_message(spec: ModelSpec, target: Path, reason: str) -> str:
    return (
        f"cannot download the {spec.name} checkpoint ({reason}).\n"
        f"Download {spec.url} (md5 {spec.md5}) on a machine with internet access and put it at\n"
        f"  {target}\n"
        f"(set ${CACHE_ENV} to use another cache directory), or pass --checkpoint PATH."
    )


def _download(url: str, target: Path) -> None:
    """Download to a temporary file beside ``target`` and rename, so no partial file is ever cached."""
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
