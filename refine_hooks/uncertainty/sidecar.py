"""The files that carry per-record maps next to an annotation file: uncertainty sidecars and coarse
probabilities.

A map file holds, per record, a uint8 map on a window of the record's image (0 outside it):

- ``<OUT>.uncertainty.bin``, written by ``tools/refine_pseudo_labels.py --uncertainty`` next to ``OUT``:
  the uncertainty ``u`` of each refined record as levels ``round(255 u)`` on the union of its coarse and
  refined masks' boxes (:mod:`.maps`);
- ``pseudo_coarse.probabilities.bin``, written by the framework hooks next to a round's coarse file: a
  detector's mask probabilities ``p`` of each coarse record as ``round(255 p)``, so that the job can use
  them as σ(s).

Layout (all integers little-endian)::

    8 bytes   magic b"RHMAPS1\\n"
    8 bytes   uint64: length of the header
    header    JSON (UTF-8): {"format": 1, "kind": "uncertainty" | "coarse_probability",
              "key": "id" | "index", "count": N, ...what made the maps}
    index     N x 44 bytes: key int64, offset uint64, nbytes uint32, x0, y0, w, h, height, width uint32
              (offset from the start of the blobs; height x width: the size of the record's image)
    blobs     per record, zlib (level 6) of its h x w uint8 levels, row-major

Records are keyed by annotation ``id`` (``key: "id"``), or by position in the file when the records have
no ids (COCO result lists). Readers read the header and index once and each map on demand (``pread``,
safe in DataLoader worker processes). The bytes depend on nothing but the maps and the header, so a
resumed or sharded job writes the same file.

8-bit levels on the window rather than a run-length encoding of the uncertain band ``c <= θ``: the
uncertainty-aware focal / BCE losses weight each pixel by ``c`` itself (SUM eq. 1), which a band throws
away; ``tools/benchmark.py job --uncertainty`` measures both sizes (docs/uncertainty.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..data.annotations import atomic_write
from ..data.windows import WindowedMap

MAGIC = b"RHMAPS1\n"
FORMAT = 1
KIND_UNCERTAINTY = "uncertainty"
KIND_COARSE_PROBABILITY = "coarse_probability"
INDEX_DTYPE = np.dtype([("key", "<i8"), ("offset", "<u8"), ("nbytes", "<u4"), ("x0", "<u4"), ("y0", "<u4"),
                        ("w", "<u4"), ("h", "<u4"), ("height", "<u4"), ("width", "<u4")])
_COMPRESSION = 6
_LISTED = 10


class MapFileError(ValueError):
    """A map file is malformed or does not belong to the annotation file it is used with; the message
    names the files and the records."""


def uncertainty_path(output_path: str) -> str:
    """The uncertainty sidecar of an output / annotation file: ``x.json`` -> ``x.uncertainty.bin``."""
    root, _ = os.path.splitext(os.fspath(output_path))
    return f"{root}.uncertainty.bin"


def coarse_probability_path(coarse_path: str) -> str:
    """Where a hook puts the detector's probabilities of a coarse file: ``x.json`` -> ``x.probabilities.bin``."""
    root, _ = os.path.splitext(os.fspath(coarse_path))
    return f"{root}.probabilities.bin"


def encode_levels(levels: np.ndarray) -> bytes:
    """uint8 ``h x w`` -> the compressed blob."""
    if levels.dtype != np.uint8 or levels.ndim != 2:
        raise ValueError(f"map levels must be a uint8 h x w array, got {levels.dtype} {levels.shape}")
    return zlib.compress(np.ascontiguousarray(levels).tobytes(), _COMPRESSION)


@dataclasses.dataclass
class MapEntry:
    """One record's map, compressed.

    Attributes:
        key: the record's annotation id (or its position in the file).
        height, width: the record's image size.
        x0, y0, w, h: the window.
        blob: :func:`encode_levels` of the ``h x w`` levels.
    """

    key: int
    height: int
    width: int
    x0: int
    y0: int
    w: int
    h: int
    blob: bytes

    @classmethod
    def from_levels(cls, key: int, height: int, width: int, levels: WindowedMap) -> "MapEntry":
        h, w = levels.values.shape
        if levels.x0 < 0 or levels.y0 < 0 or levels.x0 + w > width or levels.y0 + h > height:
            raise ValueError(f"record {key}: window {levels.box} is not inside its {height}x{width} image")
        return cls(int(key), int(height), int(width), int(levels.x0), int(levels.y0), int(w), int(h), encode_levels(levels.values))

    def levels(self) -> WindowedMap:
        values = np.frombuffer(zlib.decompress(self.blob), dtype=np.uint8).reshape(self.h, self.w)
        return WindowedMap(values, self.x0, self.y0)


def write_map_file(path: str, entries: Sequence[MapEntry], *, kind: str, key: str = "id",
                   meta: Optional[Mapping[str, Any]] = None) -> None:
    """Write ``entries`` (in the given order) to ``path`` atomically (see the module docstring)."""
    keys = [entry.key for entry in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: a record has more than one map")
    index = np.zeros(len(entries), dtype=INDEX_DTYPE)
    offset = 0
    for row, entry in zip(index, entries):
        row["key"], row["offset"], row["nbytes"] = entry.key, offset, len(entry.blob)
        row["x0"], row["y0"], row["w"], row["h"] = entry.x0, entry.y0, entry.w, entry.h
        row["height"], row["width"] = entry.height, entry.width
        offset += len(entry.blob)
    _write(path, kind, key, meta, index, (entry.blob for entry in entries))


def _write(path: str, kind: str, key: str, meta: Optional[Mapping[str, Any]], index: np.ndarray, blobs: Iterable[bytes]) -> None:
    header = {"format": FORMAT, "kind": kind, "key": key, "count": len(index), **dict(meta or {})}
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")

    def write(handle) -> None:
        handle.write(MAGIC)
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        handle.write(index.tobytes())
        for blob in blobs:
            handle.write(blob)

    atomic_write(path, write, binary=True)


def merge_map_files(path: str, parts: Sequence["MapFile"], keys: Sequence[int], *, kind: str, key: str = "id",
                    meta: Optional[Mapping[str, Any]] = None) -> None:
    """Write the maps of ``parts`` (keyed by record position) into one file at ``path``, in position order,
    keyed by ``keys[position]``; blobs are copied from the parts one at a time (memory: the indexes only)."""
    indexes = [part.index for part in parts]
    index = np.concatenate(indexes) if indexes else np.zeros(0, dtype=INDEX_DTYPE)
    owner = np.concatenate([np.full(len(ix), i, dtype=np.int64) for i, ix in enumerate(indexes)]) if indexes else np.zeros(0, np.int64)
    order = np.argsort(index["key"], kind="stable")
    if len(order) and np.any(np.diff(index["key"][order]) == 0):
        raise ValueError(f"{path}: a record has maps in more than one part")
    merged = index[order].copy()
    sources = [(owner[i], int(index["offset"][i]), int(index["nbytes"][i])) for i in order]
    merged["key"] = np.asarray(keys, dtype=np.int64)[merged["key"]] if len(merged) else merged["key"]
    merged["offset"] = np.concatenate([[0], np.cumsum(merged["nbytes"].astype(np.uint64))[:-1]]) if len(merged) else merged["offset"]
    _write(path, kind, key, meta, merged, (parts[part].read_blob(offset, nbytes) for part, offset, nbytes in sources))


class MapFile:
    """Read a map file: its header, which keys it has, and each record's map on demand."""

    def __init__(self, path: str, kind: Optional[str] = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such map file")
        with open(self.path, "rb") as handle:
            head = handle.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
                raise MapFileError(f"{self.path}: not a refine-hooks map file (wrong magic bytes)")
            (header_length,) = struct.unpack("<Q", head[len(MAGIC):])
            try:
                self.header: Dict[str, Any] = json.loads(handle.read(header_length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise MapFileError(f"{self.path}: unreadable header ({error})") from error
            if self.header.get("format") != FORMAT:
                raise MapFileError(f"{self.path}: map file format {self.header.get('format')!r}, this version reads {FORMAT}")
            count = int(self.header["count"])
            raw = handle.read(count * INDEX_DTYPE.itemsize)
            if len(raw) != count * INDEX_DTYPE.itemsize:
                raise MapFileError(f"{self.path}: truncated index ({len(raw)} of {count * INDEX_DTYPE.itemsize} bytes)")
            self.index = np.frombuffer(raw, dtype=INDEX_DTYPE)
            self._blobs_start = len(MAGIC) + 8 + header_length + count * INDEX_DTYPE.itemsize
        size = os.path.getsize(self.path)
        if count and self._blobs_start + int(self.index["offset"][-1]) + int(self.index["nbytes"][-1]) > size:
            raise MapFileError(f"{self.path}: truncated ({size} bytes; the index points beyond the end)")
        if kind is not None and self.header.get("kind") != kind:
            raise MapFileError(f"{self.path}: holds {self.header.get('kind')!r} maps, expected {kind!r}")
        self._order = np.argsort(self.index["key"], kind="stable")
        self._sorted_keys = self.index["key"][self._order]
        self._fd: Optional[int] = None
        self._fd_pid: Optional[int] = None

    # ------------------------------------------------------------------ lookup
    @property
    def kind(self) -> str:
        return str(self.header["kind"])

    @property
    def key_kind(self) -> str:
        return str(self.header["key"])

    def __len__(self) -> int:
        return len(self.index)

    def keys(self) -> np.ndarray:
        """int64 keys in file order."""
        return self.index["key"].copy()

    def _row(self, key: int) -> Optional[int]:
        position = int(np.searchsorted(self._sorted_keys, key))
        if position < len(self._sorted_keys) and int(self._sorted_keys[position]) == int(key):
            return int(self._order[position])
        return None

    def __contains__(self, key: Hashable) -> bool:
        return isinstance(key, (int, np.integer)) and self._row(int(key)) is not None

    def image_size(self, key: int) -> Tuple[int, int]:
        row = self.index[self._require(key)]
        return int(row["height"]), int(row["width"])

    def read_blob(self, offset: int, nbytes: int) -> bytes:
        """``nbytes`` bytes of the blobs at ``offset`` (an index row's offset)."""
        return os.pread(self._descriptor(), nbytes, self._blobs_start + offset)

    def entry(self, key: int) -> MapEntry:
        row = self.index[self._require(key)]
        blob = self.read_blob(int(row["offset"]), int(row["nbytes"]))
        return MapEntry(int(row["key"]), int(row["height"]), int(row["width"]), int(row["x0"]), int(row["y0"]),
                        int(row["w"]), int(row["h"]), blob)

    def levels(self, key: int) -> WindowedMap:
        """The record's uint8 levels on its window (0 outside)."""
        entry = self.entry(key)
        try:
            return entry.levels()
        except (zlib.error, ValueError) as error:
            raise MapFileError(f"{self.path}: the map of record {key} is corrupt ({error})") from error

    def _require(self, key: int) -> int:
        row = self._row(int(key))
        if row is None:
            raise KeyError(f"{self.path} has no map for {self.key_kind} {key}")
        return row

    def _descriptor(self) -> int:
        # One descriptor per process: DataLoader workers fork, and pread needs no shared file position.
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return self._fd

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = state["_fd_pid"] = None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


def _record_size(record: Mapping[str, Any], image_size: Optional[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    segmentation = record.get("segmentation")
    if isinstance(segmentation, dict) and "size" in segmentation:
        return int(segmentation["size"][0]), int(segmentation["size"][1])
    return image_size


def check_against_annotations(maps: MapFile, records: Iterable[Mapping[str, Any]], image_sizes: Mapping[Hashable, Tuple[int, int]],
                              annotation_path: str, *, require_refined: bool = True) -> None:
    """Stop with a :class:`MapFileError` naming both files unless ``maps`` belongs to these records.

    Checks: the map file is keyed by annotation id; every key is an annotation id of the file (maps for
    ids the file does not have: a sidecar of another annotation file); with ``require_refined`` every
    record whose ``refinement.status`` is ``refined`` has a map; every map has its record's image size and
    lies inside it.

    Args:
        records: the annotation file's records (dicts with ``id``, ``image_id``, ``segmentation``, ...).
        image_sizes: image id -> ``(height, width)``.
    """
    where = f"{maps.path} (for {annotation_path})"
    if maps.key_kind != "id":
        raise MapFileError(f"{where}: keyed by record position, not annotation id; only files whose records have ids can be trained on")
    by_id: Dict[int, Mapping[str, Any]] = {}
    for record in records:
        if "id" in record:
            by_id[int(record["id"])] = record
    keys = maps.keys()
    foreign = [int(k) for k in keys if int(k) not in by_id]
    if foreign:
        raise MapFileError(
            f"{where}: {len(foreign)} of its {len(keys)} maps are for annotation ids that {annotation_path} does not have "
            f"(first: {', '.join(map(str, foreign[:_LISTED]))}); the sidecar was written for another annotation file")
    if require_refined:
        present = set(int(k) for k in keys)
        missing = [i for i, r in by_id.items() if (r.get("refinement") or {}).get("status") == "refined" and i not in present]
        if missing:
            raise MapFileError(
                f"{where}: {len(missing)} refined records of {annotation_path} have no map "
                f"(annotation ids {', '.join(map(str, missing[:_LISTED]))}); the sidecar was written for another annotation file")
    problems: List[str] = []
    for row in maps.index:
        record = by_id[int(row["key"])]
        size = _record_size(record, image_sizes.get(record.get("image_id")))
        map_size = (int(row["height"]), int(row["width"]))
        if size is not None and size != map_size:
            problems.append(f"annotation id {int(row['key'])} (image id {record.get('image_id')}): the map is for a "
                            f"{map_size[0]}x{map_size[1]} image, the record's mask is {size[0]}x{size[1]}")
        elif int(row["x0"]) + int(row["w"]) > map_size[1] or int(row["y0"]) + int(row["h"]) > map_size[0]:
            problems.append(f"annotation id {int(row['key'])}: window leaves its {map_size[0]}x{map_size[1]} image")
    if problems:
        listed = "\n  ".join(problems[:_LISTED])
        raise MapFileError(f"{where}: {len(problems)} maps disagree with their records:\n  {listed}")
