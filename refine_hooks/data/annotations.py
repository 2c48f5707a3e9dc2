"""Read and write the three kinds of mask-record files the pseudo-label job accepts.

- ``coco``: a COCO annotation file (``{"images", "annotations", ...}``), as CutLER's
  ``get_self_training_ann.py``, Noisy Boundaries' ``form_ann.py`` and PointWSSIS' merge scripts write.
  Records are the ``annotations``; images come from the file itself.
- ``results``: a COCO result list (``[{"image_id", "category_id", "segmentation", "score"}, ...]``).
- ``detectron2``: Detectron2's ``instances_predictions.pth`` (``torch.save`` of a list of
  ``{"image_id", "instances": [COCO result dicts]}``, written by ``COCOEvaluator``).

Result lists and ``.pth`` files do not name image files, so they need the COCO file of the dataset
they were predicted on (``image_info_path``) for ``file_name``, ``height`` and ``width``.

Records are kept as the very dicts that were loaded, inside the very container they came in, so that
writing the file back out keeps every field and every other part of the file as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from typing import Any, Callable, Dict, Hashable, List, Optional

INPUT_KINDS = ("coco", "results", "detectron2")
TORCH_SUFFIXES = (".pth", ".pt")  # the file name endings of Detectron2 predictions (torch archives)


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Where an image lives and the size its masks must have (``None`` when the file does not say)."""

    image_id: Hashable
    file_name: str
    height: Optional[int]
    width: Optional[int]


@dataclasses.dataclass
class AnnotationFile:
    """A loaded mask-record file.

    Attributes:
        kind: one of :data:`INPUT_KINDS`.
        data: the loaded object (dict for ``coco``, list otherwise); ``records`` are dicts inside it.
        records: every mask record in file order.
        images: image id -> :class:`ImageInfo` for every image the file (or the image-info file) knows.
        image_order: ids of the images to process, in file order: the ``images`` list for ``coco``,
            first appearance in the records otherwise.
    """

    kind: str
    data: Any
    records: List[Dict[str, Any]]
    images: Dict[Hashable, ImageInfo]
    image_order: List[Hashable]


class AnnotationFileError(ValueError):
    """A mask-record file is malformed; the message names the file and the record."""


def record_name(record: Dict[str, Any], index: int) -> str:
    """How messages name a record: its annotation id when it has one, always its position."""
    if "id" in record:
        return f"annotation id {record['id']} (record #{index})"
    return f"record #{index} (image_id {record.get('image_id')})"


def detect_kind(path: str | os.PathLike, data: Any = None) -> str:
    """The kind of a mask-record file from its suffix and, for JSON, its top-level structure."""
    path = os.fspath(path)
    if path.lower().endswith(TORCH_SUFFIXES):
        return "detectron2"
    if data is None:
        data = _load_json(path)
    if isinstance(data, dict) and "annotations" in data:
        return "coco"
    if isinstance(data, list):
        return "results"
    raise AnnotationFileError(
        f"{path}: not a COCO annotation file (a dict with 'annotations') nor a COCO result list (a list)"
    )


def written_suffixes(input_path: str | os.PathLike) -> tuple:
    """The file name endings an output of the same kind as ``input_path`` may have: a Detectron2 ``.pth``
    is written back as a torch archive (``.pth`` / ``.pt``), the JSON kinds as ``.json``."""
    return TORCH_SUFFIXES if os.fspath(input_path).lower().endswith(TORCH_SUFFIXES) else (".json",)


def load_json(path: str | os.PathLike, error: type = ValueError) -> Any:
    """A JSON file's contents; a file that is not JSON (malformed, binary, not UTF-8) raises ``error``
    with a message naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a JSON file (not UTF-8 text; a binary file such as a .pth?)") from None


def _load_json(path: str) -> Any:
    return load_json(path, AnnotationFileError)


def image_file_name(image: Dict[str, Any]) -> Optional[str]:
    """An image entry's file, relative to the image root: ``file_name``, or for LVIS files (which have only
    ``coco_url``) the URL's last two parts, e.g. ``train2017/000000391895.jpg`` under the COCO root, as
    Detectron2's LVIS loader resolves them. None when the entry has neither."""
    if "file_name" in image:
        return str(image["file_name"])
    url = image.get("coco_url")
    if isinstance(url, str) and url.count("/") >= 1:
        return "/".join(url.rstrip("/").split("/")[-2:])
    return None


def coco_image_infos(images: List[Dict[str, Any]], source: str) -> Dict[Hashable, ImageInfo]:
    """Image id -> :class:`ImageInfo` of a COCO ``images`` list (``source`` names the file in errors).

    An id listed twice for the same file and size is one image; listed for different files or sizes it is
    an :class:`AnnotationFileError`: the annotations of that id would be read on the wrong file."""
    infos: Dict[Hashable, ImageInfo] = {}
    for position, image in enumerate(images):
        file_name = image_file_name(image) if isinstance(image, dict) else None
        if not isinstance(image, dict) or "id" not in image or file_name is None:
            raise AnnotationFileError(f"{source}: images[{position}] has no 'id' or no 'file_name' (nor an LVIS 'coco_url')")
        height, width = image.get("height"), image.get("width")
        info = ImageInfo(
            image_id=image["id"],
            file_name=file_name,
            height=None if height is None else int(height),
            width=None if width is None else int(width),
        )
        seen = infos.get(info.image_id)
        if seen is not None and seen != info:
            first = next(k for k, other in enumerate(images) if other.get("id") == info.image_id)
            raise AnnotationFileError(
                f"{source}: images[{first}] and images[{position}] have the same id "
                f"{info.image_id!r} but differ ({seen.file_name} {seen.height}x{seen.width}, {info.file_name} "
                f"{info.height}x{info.width}): an image id must name one image"
            )
        infos[info.image_id] = info
    return infos


def load_image_infos(path: str | os.PathLike) -> Dict[Hashable, ImageInfo]:
    """Image id -> :class:`ImageInfo` from the ``images`` list of a COCO annotation file."""
    path = os.fspath(path)
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise AnnotationFileError(f"{path}: an image-info file must be a COCO annotation file with 'images'")
    return coco_image_infos(data["images"], path)


def _load_detectron2(path: str) -> List[Dict[str, Any]]:
    import torch  # the core depends on torch anyway; imported here to keep JSON-only use light

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds; all mean "not readable"
        raise AnnotationFileError(f"{path}: cannot load as a Detectron2 predictions file ({error})") from error
    if not isinstance(data, list) or not all(isinstance(p, dict) and "image_id" in p for p in data):
        raise AnnotationFileError(
            f"{path}: a Detectron2 instances_predictions.pth is a list of dicts with 'image_id' and 'instances'"
        )
    return data


def _first_appearance(image_ids: List[Hashable]) -> List[Hashable]:
    return list(dict.fromkeys(image_ids))


def load_annotation_file(
    path: str | os.PathLike, image_info_path: str | os.PathLike | None = None
) -> AnnotationFile:
    """Load any of the :data:`INPUT_KINDS` (see the module docstring).

    Raises :class:`AnnotationFileError` naming the file and the record when the structure is wrong, or
    when a result list / ``.pth`` comes without ``image_info_path``.
    """
    path = os.fspath(path)
    kind = detect_kind(path) if path.lower().endswith(TORCH_SUFFIXES) else None
    if kind == "detectron2":
        data: Any = _load_detectron2(path)
    else:
        data = _load_json(path)
        kind = detect_kind(path, data)

    if kind == "coco":
        if not isinstance(data.get("images"), list) or not isinstance(data["annotations"], list):
            raise AnnotationFileError(f"{path}: 'images' and 'annotations' must be lists")
        records = data["annotations"]
        images = coco_image_infos(data["images"], path)
        if image_info_path is not None:
            # The file's own images win; the extra file only fills in images it lacks.
            images = {**load_image_infos(image_info_path), **images}
        image_order = _first_appearance([image["id"] for image in data["images"]])
    else:
        if kind == "results":
            records = data
        else:
            records = [instance for prediction in data for instance in prediction.get("instances", [])]
        if image_info_path is None:
            raise AnnotationFileError(
                f"{path}: a {'COCO result list' if kind == 'results' else 'Detectron2 predictions file'} does "
                "not name image files; pass the COCO annotation file of the dataset it was predicted on "
                "(--image-info)"
            )
        images = load_image_infos(image_info_path)
        if kind == "detectron2":
            image_order = _first_appearance([prediction["image_id"] for prediction in data])
        else:
            image_order = _first_appearance([r.get("image_id") for r in records if isinstance(r, dict)])

    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise AnnotationFileError(f"{path}: record #{index} is a {type(record).__name__}, not a dict")
        if "image_id" not in record:
            raise AnnotationFileError(f"{path}: {record_name(record, index)} has no 'image_id'")
    return AnnotationFile(kind=kind, data=data, records=records, images=images, image_order=image_order)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write a file so that readers see either the old file or the complete new one, never a part.

    ``write(handle)`` fills a temporary file next to ``path``; it is flushed, fsynced and renamed over
    ``path``. A crash leaves at most a ``.tmp`` file behind, which the next write replaces.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_annotation_file(annotations: AnnotationFile, path: str | os.PathLike) -> None:
    """Write ``annotations.data`` (with its records as they are now) as the same kind of file, atomically."""
    if annotations.kind == "detectron2":
        import torch

        atomic_write(path, lambda handle: torch.save(annotations.data, handle), binary=True)
    else:
        atomic_write(path, lambda handle: json.dump(annotations.data, handle))


def limit_images(annotations: AnnotationFile, count: int) -> AnnotationFile:
    """A copy of the file's structure keeping only the first ``count`` images of ``image_order`` and
    their records (the record dicts themselves are shared, not copied)."""
    keep_ids = set(annotations.image_order[:count])
    order = annotations.image_order[:count]
    records = [r for r in annotations.records if r["image_id"] in keep_ids]
    if annotations.kind == "coco":
        data = dict(annotations.data)
        data["images"] = [image for image in annotations.data["images"] if image["id"] in keep_ids]
        data["annotations"] = records
    elif annotations.kind == "results":
        data = records
    else:
        data = [prediction for prediction in annotations.data if prediction["image_id"] in keep_ids]
        records = [instance for prediction in data for instance in prediction.get("instances", [])]
    return AnnotationFile(kind=annotations.kind, data=data, records=records, images=annotations.images, image_order=order)
