"""The on-disk state of a job: ``OUT.work/`` next to the output file.

```
OUT.work/manifest.json          what the job is: input file hash, result-deciding options, chunk count
OUT.work/chunk-0000042.json     outputs of every record of chunk 42's images, written once, atomically
OUT.work/maps-0000042.bin       with --uncertainty: chunk 42's uncertainty maps, written just before its chunk file
```

A chunk file exists only when complete (temporary file + fsync + rename), so a killed job loses at most
the chunks it was working on, and a rerun skips every chunk that has a file. Chunk files do not depend on
how many ranks or shards produced them, so any split can resume any other.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from typing import Any, Dict, Optional, Set

from ..data.annotations import atomic_write
from ..files import flatten_settings
from ..uncertainty.sidecar import KIND_UNCERTAINTY, MapEntry, MapFile, write_map_file

MANIFEST = "manifest.json"
# Manifest entries that may be switched from False to True on resume without changing finished chunks.
SWITCH_ON_KEYS = frozenset({"options.skip_missing_images", "options.skip_invalid_records"})
_CHUNK_PREFIX = "chunk-"
_MAPS_PREFIX = "maps-"


class WorkDirMismatchError(RuntimeError):
    """A half-done job in the work directory was started with other inputs or options."""


def work_dir_for(output_path: str) -> str:
    return os.path.abspath(output_path) + ".work"


class WorkDir:
    """Manifest and chunk files of one job (see the module docstring)."""

    def __init__(self, root: str):
        self.root = root

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.root, MANIFEST)

    def chunk_path(self, chunk: int) -> str:
        return os.path.join(self.root, f"{_CHUNK_PREFIX}{chunk:07d}.json")

    def maps_path(self, chunk: int) -> str:
        return os.path.join(self.root, f"{_MAPS_PREFIX}{chunk:07d}.bin")

    def open(self, manifest: Dict[str, Any]) -> bool:
        """Start or resume the job described by ``manifest``. Returns True when resuming.

        Raises :class:`WorkDirMismatchError` naming what changed when the directory holds another job.
        """
        os.makedirs(self.root, exist_ok=True)
        if os.path.exists(self.manifest_path):
            with open(self.manifest_path) as handle:
                existing = json.load(handle)
            old, new = flatten_settings(existing), flatten_settings(manifest)
            changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
            if changed and not self.done_chunks():
                existing = None  # nothing was done under the old manifest: start afresh
            elif changed and all(key in SWITCH_ON_KEYS and new.get(key) is True for key in changed):
                # e.g. --skip-missing-images added after a run stopped at a truncated image: the chunks
                # already written are what a run with the switch on writes (any problem in them would
                # have stopped the run before they were written).
                existing = None
            elif changed:
                raise WorkDirMismatchError(
                    f"{self.root} holds a half-done job with other inputs or options (changed: {', '.join(changed)}). "
                    "Rerun with the original input and options to finish it, or delete the directory to start over."
                )
            if existing is not None:
                return True
        elif self.done_chunks():
            raise WorkDirMismatchError(f"{self.root} has chunk files but no {MANIFEST}; delete the directory to start over")
        atomic_write(self.manifest_path, lambda handle: json.dump(manifest, handle, indent=1, sort_keys=True))
        return bool(self.done_chunks())

    def done_chunks(self) -> Set[int]:
        if not os.path.isdir(self.root):
            return set()
        return {
            int(name[len(_CHUNK_PREFIX) : -len(".json")])
            for name in os.listdir(self.root)
            if name.startswith(_CHUNK_PREFIX) and name.endswith(".json")
        }

    def write_chunk(self, chunk: int, outputs: Dict[int, Dict[str, Any]], maps: Optional[Dict[int, MapEntry]] = None) -> None:
        """Store the outputs (record index -> output) of a finished chunk, atomically; ``maps`` (record index
        -> uncertainty map) go first, so that a chunk that counts as done always has them."""
        if maps is not None:
            write_map_file(self.maps_path(chunk), [maps[i] for i in sorted(maps)], kind=KIND_UNCERTAINTY, key="index")
        payload = {"chunk": chunk, "host": socket.gethostname(), "records": sorted(outputs.items())}
        atomic_write(self.chunk_path(chunk), lambda handle: json.dump(payload, handle))

    def read_maps(self, chunk: int) -> MapFile:
        """The uncertainty maps of a finished chunk (keyed by record index)."""
        if not os.path.exists(self.maps_path(chunk)):
            raise WorkDirMismatchError(f"{self.root}: chunk {chunk} is done but has no {os.path.basename(self.maps_path(chunk))}; "
                                       "delete the directory to start over")
        return MapFile(self.maps_path(chunk), kind=KIND_UNCERTAINTY)

    def read_chunk(self, chunk: int) -> Dict[int, Dict[str, Any]]:
        with open(self.chunk_path(chunk)) as handle:
            payload = json.load(handle)
        return {int(index): output for index, output in payload["records"]}

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
