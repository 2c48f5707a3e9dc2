"""Training targets for refiners: where images and target masks come from, and how a sample is drawn.

Three kinds of source, any number of each in one run:

- :class:`CocoSource`: a COCO- or LVIS-format annotation file and its image root (LVIS images are found
  from their ``coco_url``, e.g. ``train2017/x.jpg`` under the COCO root); every non-crowd annotation is a
  target (Phoenix trains on LVIS v1 train, B.2).
- :class:`FolderPairSource`: an image folder and a mask folder whose files pair up by name, as DIS5K
  (``im/*.jpg`` + ``gt/*.png``) and ThinObject-5K (``images/`` + ``masks/``) ship; one target per image,
  mask pixels > 127 are foreground.
- :class:`UnlabeledSource`: images only; targets are SAM's confident masks (Phoenix's self-supervised mode,
  A.1 / B.4), generated once by :func:`generate_pseudo_targets` into a file that is reused; with
  ``--target-uncertainty`` each pseudo-target also has SUM's uncertainty map (:mod:`.certainty`).

Each source has SUM's task id (Sec. 3.2.4, :mod:`.tasks`): COCO / LVIS entity (2), image/mask folders
salient object (1), unlabeled pseudo (0); a constructor's ``task=`` overrides it.

A sample is one target of one image. Which sample fills slot ``j`` of iteration ``i`` depends only on the
seed, ``i``, ``j`` and the list of targets (:func:`sample_refs`), and every random draw of a sample comes
from generators seeded with ``(seed, i, j)`` (:func:`sample_seeds`): any number of ranks, workers and
restarts see the same samples.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...data.annotations import AnnotationFileError, coco_image_infos
from ...data.images import ImageReadError, load_image, read_image_size
from ...data.masks import segmentation_to_mask
from ...data.windows import WindowedMap
from .config import SelfSupervisedConfig
from .tasks import ENTITY, PSEUDO, SALIENT_OBJECT

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class TrainingDataError(ValueError):
    """Unusable training data; the message names the file (and the annotation)."""


@dataclasses.dataclass(frozen=True)
class TargetRef:
    """One sample: target ``target`` of image ``image`` of source ``source`` (``target`` = -1: drawn
    per sample among the image's targets, for pseudo-targets)."""

    source: int
    image: int
    target: int


class Source:
    """Images and their target masks. Subclasses fill :attr:`images` (paths) and implement the rest."""

    name: str = "source"
    images: List[str]
    task: int = ENTITY  # SUM's task id (Sec. 3.2.4)

    def target_count(self, image: int) -> int:
        raise NotImplementedError

    def load_target(self, image: int, target: int, height: int, width: int) -> np.ndarray:
        """bool ``height x width`` target mask; raises :class:`TrainingDataError` naming the file."""
        raise NotImplementedError

    def expected_size(self, image: int) -> Optional[Tuple[int, int]]:
        """The size the source says the image has, when it says one."""
        return None

    def load_uncertainty(self, image: int, target: int, height: int, width: int) -> Optional[WindowedMap]:
        """SUM's uncertainty map of a target as uint8 levels ``u = level / 255`` on a window (0 outside),
        or None: the target is certain (human labels)."""
        return None

    def refs(self, source_index: int) -> List[TargetRef]:
        return [TargetRef(source_index, i, j) for i in range(len(self.images)) for j in range(self.target_count(i))]

    def check(self, skip_missing: bool) -> List[str]:
        """Read every image header (and mask header): problems as messages. With ``skip_missing`` a
        missing or unreadable image is dropped (and reported); otherwise it raises naming the files."""
        problems, keep = [], []
        for i, path in enumerate(self.images):
            try:
                size = read_image_size(path)
                expected = self.expected_size(i)
                if expected is not None and expected != size:
                    raise TrainingDataError(f"{path} is {size[0]}x{size[1]} but {self.name} says {expected[0]}x{expected[1]}")
                self._check_image(i, size)
                keep.append(i)
            except (ImageReadError, TrainingDataError) as error:
                problems.append(str(error))
        if problems and not skip_missing:
            listed = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise TrainingDataError(f"{len(problems)} unusable images in {self.name} (--skip-missing-images drops "
                                    f"them):\n  {listed}{more}")
        self._keep(keep)
        return problems

    def _check_image(self, image: int, size: Tuple[int, int]) -> None:
        pass

    def _keep(self, keep: List[int]) -> None:
        self.images = [self.images[i] for i in keep]


class CocoSource(Source):
    """Every non-crowd annotation of a COCO- or LVIS-format file is a target (see the module docstring)."""

    task = ENTITY

    def __init__(self, annotation_file: str, image_root: str, task: Optional[int] = None):
        self.name = annotation_file
        self.task = self.task if task is None else int(task)
        try:
            with open(annotation_file) as handle:
                data = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise TrainingDataError(f"{annotation_file}: cannot read it as JSON ({error})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
            raise TrainingDataError(f"{annotation_file}: not a COCO/LVIS annotation file (needs 'images' and 'annotations' lists)")
        by_image: Dict[Any, List[Dict[str, Any]]] = {}
        try:
            infos = coco_image_infos(data["images"], annotation_file)  # one per image id, or an error
        except AnnotationFileError as error:
            raise TrainingDataError(str(error)) from None
        for position, annotation in enumerate(data["annotations"]):
            if not isinstance(annotation, dict) or "segmentation" not in annotation or "image_id" not in annotation:
                raise TrainingDataError(f"{annotation_file}: annotations[{position}] has no 'image_id' or no 'segmentation'")
            if annotation["image_id"] not in infos:
                raise TrainingDataError(f"{annotation_file}: annotation id {annotation.get('id')} names image "
                                        f"{annotation['image_id']}, which is not in 'images'")
            if not annotation.get("iscrowd", 0):
                by_image.setdefault(annotation["image_id"], []).append(annotation)
        self.entries = [info for image_id, info in infos.items() if by_image.get(image_id)]
        self.images = [os.path.join(image_root, info.file_name) for info in self.entries]
        self.annotations = [by_image[info.image_id] for info in self.entries]

    def _keep(self, keep: List[int]) -> None:
        super()._keep(keep)
        self.entries = [self.entries[i] for i in keep]
        self.annotations = [self.annotations[i] for i in keep]

    def target_count(self, image: int) -> int:
        return len(self.annotations[image])

    def expected_size(self, image: int) -> Optional[Tuple[int, int]]:
        entry = self.entries[image]
        if entry.height is None or entry.width is None:
            return None
        return entry.height, entry.width

    def load_target(self, image: int, target: int, height: int, width: int) -> np.ndarray:
        annotation = self.annotations[image][target]
        try:
            return segmentation_to_mask(annotation["segmentation"], height, width)
        except (ValueError, TypeError) as error:
            raise TrainingDataError(f"{self.name}: annotation id {annotation.get('id')} of {self.images[image]} has a "
                                    f"segmentation that cannot be decoded at {height}x{width}: {error}") from None


def _by_stem(folder: str) -> Dict[str, str]:
    if not os.path.isdir(folder):
        raise TrainingDataError(f"{folder} is not a directory")
    files = {}
    for name in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in IMAGE_SUFFIXES:
            files.setdefault(stem, os.path.join(folder, name))
    return files


class FolderPairSource(Source):
    """Images and masks paired by file name (see the module docstring); one target per image."""

    task = SALIENT_OBJECT

    def __init__(self, image_dir: str, mask_dir: str, task: Optional[int] = None):
        self.name = f"{image_dir} + {mask_dir}"
        self.task = self.task if task is None else int(task)
        images, masks = _by_stem(image_dir), _by_stem(mask_dir)
        unpaired = sorted(set(images) ^ set(masks))
        if unpaired:
            names = ", ".join(images.get(stem) or masks[stem] for stem in unpaired[:10])
            raise TrainingDataError(f"{len(unpaired)} files of {self.name} have no partner of the same name: {names}")
        if not images:
            raise TrainingDataError(f"{image_dir} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        stems = sorted(images)
        self.images = [images[stem] for stem in stems]
        self.masks = [masks[stem] for stem in stems]

    def _keep(self, keep: List[int]) -> None:
        super()._keep(keep)
        self.masks = [self.masks[i] for i in keep]

    def _check_image(self, image: int, size: Tuple[int, int]) -> None:
        mask_size = read_image_size(self.masks[image])
        if mask_size != size:
            raise TrainingDataError(f"mask {self.masks[image]} is {mask_size[0]}x{mask_size[1]} but its image "
                                    f"{self.images[image]} is {size[0]}x{size[1]}")

    def target_count(self, image: int) -> int:
        return 1

    def load_target(self, image: int, target: int, height: int, width: int) -> np.ndarray:
        mask = load_image(self.masks[image])[:, :, 0] > 127
        if mask.shape != (height, width):
            raise TrainingDataError(f"mask {self.masks[image]} is {mask.shape[0]}x{mask.shape[1]} but its image is {height}x{width}")
        return mask


class UnlabeledSource(Source):
    """Images whose targets are SAM's confident masks, read from a file of :func:`generate_pseudo_targets`.

    Pseudo-target ``k`` of the file (counted over all its images in order) is key ``k`` of the uncertainty
    map file :meth:`attach_uncertainty` names (:func:`.certainty.compute_target_uncertainty`).
    """

    task = PSEUDO

    def __init__(self, image_dir: str, targets_file: str, task: Optional[int] = None):
        self.name = f"{image_dir} (pseudo-targets {targets_file})"
        self.task = self.task if task is None else int(task)
        with open(targets_file) as handle:
            targets = json.load(handle)["images"]
        self.without_targets = sum(1 for entry in targets if not entry["masks"])
        firsts = np.cumsum([0] + [len(entry["masks"]) for entry in targets])[:-1]
        kept = [i for i, entry in enumerate(targets) if entry["masks"]]
        self.images = [os.path.join(image_dir, targets[i]["file_name"]) for i in kept]
        self.rles = [targets[i]["masks"] for i in kept]
        self.first_keys = [int(firsts[i]) for i in kept]
        self.uncertainty = None  # a MapFile once attached

    def _keep(self, keep: List[int]) -> None:
        super()._keep(keep)
        self.rles = [self.rles[i] for i in keep]
        self.first_keys = [self.first_keys[i] for i in keep]

    def attach_uncertainty(self, path: str) -> None:
        """Read the targets' uncertainty maps from the map file ``path`` from now on."""
        from ...uncertainty.sidecar import KIND_UNCERTAINTY, MapFile

        self.uncertainty = MapFile(path, kind=KIND_UNCERTAINTY)

    def load_uncertainty(self, image: int, target: int, height: int, width: int) -> Optional[WindowedMap]:
        if self.uncertainty is None:
            return None
        key = self.first_keys[image] + target
        if key not in self.uncertainty:  # the refiner passed the target through (e.g. its output was empty)
            return None
        if self.uncertainty.image_size(key) != (height, width):
            size = self.uncertainty.image_size(key)
            raise TrainingDataError(f"{self.uncertainty.path}: the map of pseudo-target {key} is for a {size[0]}x{size[1]} "
                                    f"image, {self.images[image]} is {height}x{width}; remove the file to compute it again")
        return self.uncertainty.levels(key)

    def refs(self, source_index: int) -> List[TargetRef]:
        return [TargetRef(source_index, i, -1) for i in range(len(self.images))]

    def target_count(self, image: int) -> int:
        return len(self.rles[image])

    def load_target(self, image: int, target: int, height: int, width: int) -> np.ndarray:
        return segmentation_to_mask(self.rles[image][target], height, width)


def image_files(folder: str) -> List[str]:
    """Image files of a folder (sorted, relative names)."""
    return [os.path.basename(path) for _, path in sorted(_by_stem(folder).items())]


def generate_pseudo_targets(engine, image_dir: str, out_path: str, config: SelfSupervisedConfig, *, progress=None) -> str:
    """Phoenix's self-supervised targets (B.4): SAM's automatic mask generator with a 4x4 point grid, its
    quality filters (predicted IoU >= 0.88, stability >= 0.95; SUM B.1) and masks under 95% of the image
    kept, for every image of ``image_dir``; written to ``out_path`` (JSON: file name -> RLEs).

    Resumable: finished images are appended to ``out_path + '.partial'`` (one JSON line each) and skipped
    when the function runs again; the final file is renamed into place when every image is done.
    """
    from segment_anything import SamAutomaticMaskGenerator

    from ...data.annotations import atomic_write

    if os.path.isfile(out_path):
        return out_path
    partial = out_path + ".partial"
    done: Dict[str, List[Dict[str, Any]]] = {}
    if os.path.isfile(partial):
        with open(partial) as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the line a crash cut short
                    break
                done[entry["file_name"]] = entry["masks"]
    generator = SamAutomaticMaskGenerator(
        engine.model, points_per_side=config.points_per_side, pred_iou_thresh=config.min_predicted_iou,
        stability_score_thresh=config.min_stability, output_mode="coco_rle")
    names = image_files(image_dir)
    todo = [name for name in names if name not in done]
    with open(partial, "a") as handle:
        for name in (progress(todo) if progress else todo):
            image = load_image(os.path.join(image_dir, name))
            area = image.shape[0] * image.shape[1]
            masks = [m["segmentation"] for m in generator.generate(image) if m["area"] < config.max_area_fraction * area]
            done[name] = masks
            handle.write(json.dumps({"file_name": name, "masks": masks}) + "\n")
            handle.flush()
    result = {"config": dataclasses.asdict(config), "images": [{"file_name": name, "masks": done[name]} for name in names]}
    atomic_write(out_path, lambda h: json.dump(result, h))
    os.remove(partial)
    return out_path


# ---------------------------------------------------------------------------------------------- sampling
def sample_refs(refs: Sequence[TargetRef], iteration: int, batch_size: int, seed: int) -> List[TargetRef]:
    """The ``batch_size`` samples of a global batch: epochs walk through a seeded permutation of ``refs``."""
    count = len(refs)
    chosen = []
    for slot in range(batch_size):
        position = iteration * batch_size + slot
        epoch, offset = divmod(position, count)
        chosen.append(refs[int(_permutation(seed, epoch, count)[offset])])
    return chosen


_PERMUTATIONS: Dict[Tuple[int, int, int], np.ndarray] = {}


def _permutation(seed: int, epoch: int, count: int) -> np.ndarray:
    key = (seed, epoch, count)
    if key not in _PERMUTATIONS:
        if len(_PERMUTATIONS) > 4:
            _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng([seed, epoch, 7919]).permutation(count)
    return _PERMUTATIONS[key]


@dataclasses.dataclass(frozen=True)
class SampleSeeds:
    """Independent random streams of one sample: data (augmentation, target draw) and noise."""

    seed: int
    iteration: int
    slot: int

    def numpy(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.iteration, self.slot, stream])

    def torch(self, stream: int) -> torch.Generator:
        value = int(np.random.default_rng([self.seed, self.iteration, self.slot, stream]).integers(2**62))
        return torch.Generator().manual_seed(value)


DATA_STREAM, NOISE_STREAM, SAMPLING_STREAM = 0, 1, 2


@dataclasses.dataclass
class Sample:
    """A loaded, augmented training sample.

    Attributes:
        image: uint8 ``H x W x 3`` RGB.
        target: bool ``H x W``.
        ref, seeds: which sample it is.
        flipped: horizontally flipped.
        path: the image file (for messages).
        uncertainty: the target's uncertainty map (uint8 levels ``u = level / 255`` on a window, 0 outside;
            flipped with the sample), or None: certain.
        task: SUM's task id of the sample's source.
    """

    image: np.ndarray
    target: np.ndarray
    ref: TargetRef
    seeds: SampleSeeds
    flipped: bool
    path: str
    uncertainty: Optional[WindowedMap] = None
    task: int = ENTITY

    def certainty(self) -> Optional[np.ndarray]:
        """float32 ``H x W`` certainty ``c = 1 - u`` of the target (None: certain everywhere)."""
        if self.uncertainty is None:
            return None
        height, width = self.target.shape
        return (1.0 - self.uncertainty.full(height, width, np.float32) / 255.0).astype(np.float32)


def flip_window(window: WindowedMap, width: int) -> WindowedMap:
    """A windowed map of a ``width``-wide image, flipped left-right with it."""
    return WindowedMap(np.ascontiguousarray(window.values[:, ::-1]), width - window.x0 - window.values.shape[1], window.y0,
                       window.fill)


def colour_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor from ``U(1 - s, 1 + s)`` (uint8 in, out)."""
    pixels = image.astype(np.float32)
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    pixels = pixels * brightness
    gray = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    pixels = (pixels - gray.mean()) * contrast + gray.mean()
    gray = (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    pixels = (pixels - gray) * saturation + gray
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


class SampleLoader(torch.utils.data.Dataset):
    """Loads the samples of an iteration's slots (DataLoader workers call it).

    Args:
        sources: the training sources.
        refs: every sample of the run (the targets of all sources).
        batch_size: the global batch; ``slots``: the slots of it this rank loads.
        hflip, jitter: augmentation probability / strength (jitter 0: off).
        seed: the run's seed.
    """

    def __init__(self, sources: Sequence[Source], refs: Sequence[TargetRef], *, batch_size: int, slots: Sequence[int],
                 hflip: float, jitter: float, seed: int):
        self.sources, self.refs = list(sources), list(refs)
        self.batch_size, self.slots = batch_size, list(slots)
        self.hflip, self.jitter, self.seed = hflip, jitter, seed

    def batch(self, iteration: int) -> List[Sample]:
        chosen = sample_refs(self.refs, iteration, self.batch_size, self.seed)
        return [self.load(iteration, slot, chosen[slot]) for slot in self.slots]

    def __getitem__(self, iteration: int) -> List[Sample]:
        return self.batch(int(iteration))

    def __len__(self) -> int:  # iterations are indexed directly; the sampler says which
        return 2**62

    def load(self, iteration: int, slot: int, ref: TargetRef) -> Sample:
        seeds = SampleSeeds(self.seed, iteration, slot)
        rng = seeds.numpy(DATA_STREAM)
        source = self.sources[ref.source]
        path = source.images[ref.image]
        try:
            image = load_image(path)
        except ImageReadError as error:
            raise TrainingDataError(str(error)) from None
        height, width = image.shape[:2]
        target_index = ref.target if ref.target >= 0 else int(rng.integers(source.target_count(ref.image)))
        target = source.load_target(ref.image, target_index, height, width)
        uncertainty = source.load_uncertainty(ref.image, target_index, height, width)
        flipped = bool(rng.random() < self.hflip)
        if self.jitter > 0:
            image = colour_jitter(image, self.jitter, rng)
        if flipped:
            image, target = image[:, ::-1], target[:, ::-1]
            uncertainty = flip_window(uncertainty, width) if uncertainty is not None else None
        return Sample(np.ascontiguousarray(image), np.ascontiguousarray(target), ref, seeds, flipped, path,
                      uncertainty=uncertainty, task=source.task)
