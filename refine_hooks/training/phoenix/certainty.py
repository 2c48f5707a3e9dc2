"""SUM's uncertainty maps of pseudo-targets (``--target-uncertainty``), computed once per pseudo-target.

In self-supervised training (``--unlabeled``) the targets are SAM's own confident masks, wrong in places.
SUM (``shared/papers/sum.txt`` Sec. 3.2.1-3.2.3) does not trust them everywhere: a refinement module
refines each pseudo-label, and the certainty of pixel i is ``c_i = 1 − |σ(s_i) − σ(r_i)|`` (eq. 3) with
σ(s) the pseudo-label's probabilities and σ(r) the refined ones. The training losses weight pixels by it
(eqs. 1-2) and prompts are drawn where it is high (Sec. 3.2.2).

Here the refinement module is any refiner of :func:`refine_hooks.refiners.build_refiner` (SAMRefiner, or a
Phoenix / SUM checkpoint trained before); σ(r) is its refined probability map
(:attr:`refine_hooks.refiners.RefineResult.probabilities`), and σ(s) the signed-distance sigmoid of the
binary pseudo-target (:func:`refine_hooks.uncertainty.binary_mask_probability`): SAM's automatic mask
generator keeps no logits of its masks (SUM uses SAM's logits). The maps are those of
``tools/refine_pseudo_labels.py --uncertainty`` (:func:`refine_hooks.uncertainty.uncertainty_map`), stored
the same way (uint8 levels on the masks' union box, zlib; :mod:`refine_hooks.uncertainty.sidecar`), keyed by
the pseudo-target's position in the pseudo-target file. A target the refiner passes through (its output was
empty) has no map: it is certain.

Computed once, before training, by rank 0: images are done in parts of :data:`PART_IMAGES`, each written
atomically to ``<map file>.parts/``; a rerun after a crash computes only the missing parts, then merges them
into the map file (named after a hash of the refiner's settings, so other settings never reuse a stale map).
A finished map file is never computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from ...data.images import load_image
from ...data.masks import segmentation_to_mask
from ...data.windows import WindowedMap
from ...refiners.base import Refiner
from ...uncertainty import KIND_UNCERTAINTY, MapEntry, MapFile, quantize, uncertainty_map, write_map_file
from ...uncertainty.maps import BINARY_COARSE_WIDTH
from ...uncertainty.sidecar import merge_map_files

PART_IMAGES = 16  # images per part file (the unit of work that survives a crash)
# Keys of a refiner dict that name files: made absolute, so the run's settings do not depend on the directory.
_PATH_KEYS = ("checkpoint", "refiner_checkpoint", "iou_adapter")


def load_refiner_config(text: str, name: str = "--target-uncertainty") -> Dict[str, Any]:
    """A refiner dict from a JSON object (``{"type": "SAMRefiner", "iterations": 3}``) or a JSON file holding
    one; file paths inside it become absolute. Raises ``ValueError`` naming ``name`` and the file or text."""
    if os.path.isfile(text):
        try:
            with open(text) as handle:
                config = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{name} {text}: cannot read it as JSON ({error})") from None
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            if text.strip().startswith("{"):
                raise ValueError(f"{name} {text!r} is not valid JSON ({error})") from None
            raise ValueError(f"{name} {text}: no such file (give a JSON object like '{{\"type\": \"SAMRefiner\"}}' or a "
                             "JSON file holding one)") from None
    if not isinstance(config, dict):
        raise ValueError(f"{name} {text}: must be a JSON object like {{\"type\": \"SAMRefiner\"}}")
    for key in _PATH_KEYS:
        if isinstance(config.get(key), str) and config[key]:
            config[key] = os.path.abspath(config[key])
    return config


def refiner_for_targets(config: Mapping[str, Any], *, model_type: str, checkpoint: Optional[str], device: str,
                        engine=None) -> Refiner:
    """The refiner of ``config``, on the trained SAM (``model_type`` / ``checkpoint``) unless it names another.

    A SAMRefiner that sets only its hyper-parameters runs on ``engine`` (the trained SAM, already loaded) when
    given; anything else builds its own model.
    """
    from ...refiners import SAMRefiner, build_refiner

    options = {key: value for key, value in config.items() if key != "type"}
    if engine is not None and config.get("type", "SAMRefiner") == "SAMRefiner" and set(options) <= set(SAMRefiner.hyper_parameters()):
        return SAMRefiner(engine, **options)
    full = {"model_type": model_type, "checkpoint": checkpoint, "device": device}
    full.update(config)
    return build_refiner(full)


def certainty_file_name(index: int, config: Mapping[str, Any]) -> str:
    """``pseudo_targets_<index>.certainty-<hash of the refiner's settings>.bin``."""
    digest = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()[:12]
    return f"pseudo_targets_{index}.certainty-{digest}.bin"


def target_maps(refiner: Refiner, image: np.ndarray, masks: np.ndarray, first_key: int) -> List[MapEntry]:
    """The uncertainty maps of one image's pseudo-targets (bool ``N x H x W``), keyed ``first_key + n``."""
    result = refiner.refine(image, masks, probabilities=True)
    height, width = masks.shape[1:]
    entries = []
    for n, probability in enumerate(result.probabilities):
        if probability is None:  # passed through: the refiner says nothing about it
            continue
        u = uncertainty_map(masks[n], result.masks[n], probability, None, BINARY_COARSE_WIDTH)
        entries.append(MapEntry.from_levels(first_key + n, height, width, WindowedMap(quantize(u.values), u.x0, u.y0)))
    return entries


def compute_target_uncertainty(make_refiner: Callable[[], Refiner], image_dir: str, targets_file: str, out_path: str, *,
                               meta: Optional[Mapping[str, Any]] = None, progress=None,
                               part_images: int = PART_IMAGES) -> str:
    """Write the uncertainty map of every pseudo-target of ``targets_file`` (:func:`.data.generate_pseudo_targets`)
    to the map file ``out_path`` (see the module docstring); returns ``out_path``.

    Args:
        make_refiner: builds the refiner (called only when some part is still to be computed).
        image_dir: the images the targets file names.
        meta: what made the maps (written into the file's header).
        progress: wraps the list of parts still to do (a progress bar), or None.
    """
    if os.path.isfile(out_path):
        return out_path
    with open(targets_file) as handle:
        entries = json.load(handle)["images"]
    firsts = np.cumsum([0] + [len(entry["masks"]) for entry in entries])
    parts_dir = out_path + ".parts"
    os.makedirs(parts_dir, exist_ok=True)
    starts = list(range(0, len(entries), part_images))
    paths = [os.path.join(parts_dir, f"part-{i:06d}.bin") for i in range(len(starts))]
    todo = [i for i, path in enumerate(paths) if not os.path.isfile(path)]
    refiner = make_refiner() if todo else None
    header = {"values": "uint8 levels of u = |sigma(s) - sigma(r)| (SUM eq. 3), u = level / 255, certainty c = 1 - u; "
                        "0 outside the window", "keys": f"position of the pseudo-target in {os.path.basename(targets_file)}",
              "sigma_s": f"signed-distance sigmoid of the binary pseudo-target, width {BINARY_COARSE_WIDTH} px",
              **dict(meta or {})}
    for part in (progress(todo) if progress else todo):
        maps: List[MapEntry] = []
        for offset, entry in enumerate(entries[starts[part] : starts[part] + part_images]):
            if not entry["masks"]:
                continue
            image = load_image(os.path.join(image_dir, entry["file_name"]))
            height, width = image.shape[:2]
            masks = np.stack([segmentation_to_mask(rle, height, width) for rle in entry["masks"]])
            maps += target_maps(refiner, image, masks, int(firsts[starts[part] + offset]))
        write_map_file(paths[part], maps, kind=KIND_UNCERTAINTY, key="index", meta=header)
    merge_map_files(out_path, [MapFile(path, kind=KIND_UNCERTAINTY) for path in paths], list(range(int(firsts[-1]))),
                    kind=KIND_UNCERTAINTY, key="index", meta=header)
    shutil.rmtree(parts_dir)
    return out_path
