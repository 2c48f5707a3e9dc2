"""``train_refiner``: everything ``tools/train_refiner.py`` does, as a function tests call directly."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ...sam import SamEngine, build_sam_model
from ...sam.refiner_weights import TASKS
from .certainty import certainty_file_name, compute_target_uncertainty, refiner_for_targets
from .config import TrainingConfig
from .data import (CocoSource, FolderPairSource, Source, TrainingDataError, UnlabeledSource, generate_pseudo_targets,
                   image_files)
from .trainer import Ranks, RefinerTrainer, default_hooks


@dataclasses.dataclass
class TrainingData:
    """Where the targets come from (any mix).

    Attributes:
        coco: ``(annotation file, image root)`` pairs: COCO or LVIS format.
        pairs: ``(image folder, mask folder)`` pairs: DIS5K / ThinObject-5K layout.
        unlabeled: image folders for the self-supervised mode (SAM's confident masks are the targets).
        skip_missing_images: drop (and report) unreadable images instead of stopping.
    """

    coco: Sequence[Tuple[str, str]] = ()
    pairs: Sequence[Tuple[str, str]] = ()
    unlabeled: Sequence[str] = ()
    skip_missing_images: bool = False

    @property
    def empty(self) -> bool:
        return not (self.coco or self.pairs or self.unlabeled)

    def input_files(self) -> List[str]:
        """Every file or folder the run reads (an output must never be one of them)."""
        return [path for spec in (*self.coco, *self.pairs) for path in spec] + list(self.unlabeled)


def default_work_dir(out: str) -> str:
    return os.path.abspath(out) + ".work"


def build_sources(data: TrainingData, *, engine=None, work_dir: str, config: TrainingConfig, ranks: Ranks,
                  log: Callable[[str], None] = print, progress: bool = True,
                  sam: Optional[Dict[str, Any]] = None) -> List[Source]:
    """The sources of ``data``, checked (headers of every image and mask read). Unlabeled folders get
    their pseudo-targets generated once into ``work_dir`` (rank 0; the others wait), and with
    ``config.target_uncertainty`` their uncertainty maps, from the refiner it names on the SAM ``sam``
    (``model_type``, ``checkpoint``, ``device``) unless it names another (:mod:`.certainty`)."""
    sources: List[Source] = [CocoSource(annotations, root) for annotations, root in data.coco]
    sources += [FolderPairSource(images, masks) for images, masks in data.pairs]
    for index, folder in enumerate(data.unlabeled):
        if not os.path.isdir(folder):
            raise TrainingDataError(f"{folder} is not a directory")
        if not image_files(folder):
            raise TrainingDataError(f"{folder} holds no image files")
        path = os.path.join(work_dir, f"pseudo_targets_{index}.json")
        if ranks.is_main:
            os.makedirs(work_dir, exist_ok=True)
            bar = (lambda items: tqdm(items, desc=f"pseudo-targets {folder}", unit="img")) if progress else None
            generate_pseudo_targets(engine, folder, path, config.self_supervised, progress=bar)
        ranks.barrier()
        source = UnlabeledSource(folder, path)
        if source.without_targets:
            log(f"{folder}: {source.without_targets} images have no confident SAM mask and are not trained on")
        if config.target_uncertainty is not None:
            source.attach_uncertainty(_target_uncertainty(config.target_uncertainty, folder, path, index, work_dir=work_dir,
                                                          ranks=ranks, sam=dict(sam or {}), progress=progress))
        sources.append(source)
    for source in sources:
        problems = source.check(data.skip_missing_images)
        if problems:
            log(f"{source.name}: {len(problems)} unusable images skipped, e.g. {problems[0]}")
    if not any(source.images for source in sources):
        raise TrainingDataError("no usable target mask in the training data " +
                                ", ".join(source.name for source in sources))
    return sources


def _target_uncertainty(refiner_config: Dict[str, Any], folder: str, targets_file: str, index: int, *, work_dir: str,
                        ranks: Ranks, sam: Dict[str, Any], progress: bool) -> str:
    """The uncertainty map file of one folder's pseudo-targets, computed once (rank 0; the others wait)."""
    path = os.path.join(work_dir, certainty_file_name(index, refiner_config))
    if ranks.is_main:
        def make_refiner():
            return refiner_for_targets(refiner_config, model_type=sam.get("model_type", "vit_h"),
                                       checkpoint=sam.get("checkpoint"), device=sam.get("device", "cpu"),
                                       engine=sam.get("engine"))

        bar = (lambda items: tqdm(items, desc=f"target uncertainty {folder}", unit="part")) if progress else None
        compute_target_uncertainty(make_refiner, folder, targets_file, path, meta={"refiner": refiner_config},
                                   progress=bar)
    ranks.barrier()
    return path


def train_refiner(data: TrainingData, out: str, config: TrainingConfig, *, model_type: str = "vit_h",
                  checkpoint: Optional[str] = None, device: str = "cpu", work_dir: Optional[str] = None,
                  cache_dir: Optional[str] = None, workers: int = 2, checkpoint_every: int = 500,
                  progress: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train a refiner and write its checkpoint to ``out`` (see ``tools/train_refiner.py``).

    Rerunning with the same arguments resumes from ``work_dir`` (default ``OUT.work/``); a finished run
    only rewrites ``out``. Returns a summary: iterations, samples, the log's path, ``out``.

    Raises:
        TrainingDataError: unusable data, naming the file, before SAM is loaded (pseudo-targets excepted).
        TrainingResumeError: ``work_dir`` holds a run with other settings.
    """
    config.validate()
    if data.empty:
        raise TrainingDataError("no training data: give --coco, --pairs or --unlabeled")
    if config.target_uncertainty is not None and not data.unlabeled:
        raise ValueError("--target-uncertainty weights pseudo-targets by SUM's certainty; it needs --unlabeled "
                         "IMAGE_DIR (human-labelled targets are trusted everywhere)")
    work_dir = work_dir or default_work_dir(out)
    ranks = Ranks.from_environment(device)
    note = log if ranks.is_main else (lambda message: None)
    if not data.unlabeled:  # check data before the (slow) model load
        sources = build_sources(data, work_dir=work_dir, config=config, ranks=ranks, log=note, progress=progress)
    sam = build_sam_model(model_type, checkpoint)
    if data.unlabeled:
        engine = SamEngine(sam, device=ranks.device(device))
        sources = build_sources(data, engine=engine, work_dir=work_dir, config=config, ranks=ranks, log=note, progress=progress,
                                sam={"model_type": model_type, "checkpoint": checkpoint, "device": ranks.device(device),
                                     "engine": engine})
    sam_info = {"model_type": model_type, "checkpoint": os.path.abspath(checkpoint) if checkpoint else None}
    trainer = RefinerTrainer(sam, sources, config, work_dir=work_dir, device=device, sam_info=sam_info,
                             cache_dir=cache_dir, workers=workers, ranks=ranks,
                             hooks=default_hooks(checkpoint_every, progress=progress and ranks.is_main, note=note))
    if trainer.task_prompt is not None:
        tasks = sorted({source.task for source in sources})
        note(f"SUM's task prompt on (tasks {', '.join(TASKS[t] for t in tasks)}; inference default "
             f"{TASKS[trainer.default_task]})")
    if trainer.resume():
        note(f"resuming from {trainer.checkpoint_path} at iteration {trainer.iteration} of {config.iterations}")
    if cache_dir and config.colour_jitter > 0:
        note("embedding cache on: colour jitter is off (it would change every embedding); flips are cached")
    trainer.train()
    if ranks.is_main:
        trainer.save_refiner(out)
    ranks.close()
    return {"iterations": trainer.iteration, "samples": len(trainer.refs), "out": out,
            "log": os.path.join(work_dir, "log.jsonl"), "work_dir": work_dir}
