"""``refine_annotation_file``: refine every mask of an annotation file, resumably, on any number of ranks.

The flow, per process:

1. load the file, group records by image, check records (:mod:`.plan`); open or resume the work
   directory (:mod:`.shards`), refusing one that holds a job with other inputs or options;
2. take this process's chunks (chunk ``k`` belongs to part ``k mod parts``, where a part is a
   ``--shard`` times a torchrun rank), skip those already done, check their image headers; every rank
   stops before any work if any rank found a problem the options do not allow;
3. DataLoader workers decode images and masks (:mod:`.worker`), the main process batches them through
   the refiner and writes each chunk's outputs when its last image is done;
4. when every chunk is done, rank 0 merges them into the output file in input order (so any split and
   any resume give the same bytes) and writes the summary next to it.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..cli import same_file
from ..data.annotations import (
    TORCH_SUFFIXES,
    AnnotationFile,
    limit_images,
    load_annotation_file,
    write_annotation_file,
    written_suffixes,
)
from ..files import file_sha256
from ..refiners.base import Refiner, RefineResult
from .distributed import Ranks, init_ranks
from .options import JobOptions
from .plan import JobInputError, Plan, build_plan, check_images, input_warnings
from .shards import WorkDir, work_dir_for
from .summary import Summary, summary_path, write_summary
from .uncertainty import UncertaintyRecorder, open_coarse_probabilities, record_keys, write_sidecar
from .worker import INFO_KEY, STATUS_REFINED, ImageWorkDataset, WorkItem, copied_output, keep_items, passed_output, refined_outputs

MANIFEST_FORMAT = 1
logger = logging.getLogger(__name__)


class RefinerUnavailableError(RuntimeError):
    """The requested refiner cannot be built from the options (a trained refiner without its checkpoint,
    or with a checkpoint that is not one); the message names the option or the file."""


def check_refiner_options(options: JobOptions) -> None:
    """Fail before any work when a trained refiner's checkpoint is missing or unreadable, or has no such task."""
    if options.refiner != "phoenix":
        return
    from ..sam.refiner_weights import RefinerCheckpointError, read_refiner_checkpoint

    path = options.refiner_kwargs.get("refiner_checkpoint")
    if not path:
        raise RefinerUnavailableError("--refiner phoenix needs --refiner-checkpoint PATH (a checkpoint written by "
                                      "tools/train_refiner.py)")
    try:
        state = read_refiner_checkpoint(path)
    except RefinerCheckpointError as error:
        raise RefinerUnavailableError(str(error)) from None
    if "task" in options.refiner_kwargs:
        from ..refiners.phoenix import resolve_task

        resolve_task(state.get("task_prompt"), options.refiner_kwargs["task"], path)  # ValueError naming both


def build_job_refiner(options: JobOptions, ranks: Optional[Ranks] = None) -> Refiner:
    """The refiner the options ask for, on this rank's device."""
    from ..refiners import build_refiner

    check_refiner_options(options)
    device = options.device
    if device == "cuda" and ranks is not None and ranks.world_size > 1:
        device = f"cuda:{ranks.local_rank}"
    config: Dict[str, Any] = dict(
        type="Phoenix" if options.refiner == "phoenix" else "SAMRefiner",
        model_type=options.model_type,
        checkpoint=options.checkpoint,
        device=device,
        precision=options.precision,
    )
    if options.min_area > 0:
        config["min_area"] = options.min_area
    config.update(options.refiner_kwargs)
    return build_refiner(config)


def _manifest(input_path: str, options: JobOptions, plan: Plan, annotations: AnnotationFile) -> Dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "input": {"sha256": file_sha256(input_path), "kind": annotations.kind, "records": len(annotations.records)},
        "image_info_sha256": file_sha256(options.image_info) if options.image_info else None,
        "options": options.result_options(),
        "chunks": len(plan.chunks(options.chunk_size)),
    }


class _Refining:
    """Batches work items through the refiner and collects chunk outputs (main process)."""

    def __init__(self, refiner: Refiner, workdir: WorkDir, chunk_of: Dict[int, int], chunk_images: Dict[int, int], options: JobOptions,
                 uncertainty: Optional[UncertaintyRecorder] = None):
        self.refiner = refiner
        self.uncertainty = uncertainty
        self.maps: Dict[int, Dict[int, Any]] = collections.defaultdict(dict)  # chunk -> record index -> MapEntry
        self.workdir = workdir
        self.chunk_of = chunk_of
        self.images_left = dict(chunk_images)
        self.options = options
        self.outputs: Dict[int, Dict[int, Dict[str, Any]]] = collections.defaultdict(dict)
        self.groups_left: Dict[int, int] = {}
        self.embeddings: Dict[int, Any] = {}
        self.pending: List[WorkItem] = []
        self.model_seconds = 0.0
        self.images_done = 0
        self.masks_done = 0

    def add(self, item: WorkItem) -> int:
        """Take one item; returns how many images were completed by it and any flush it caused."""
        self.outputs[self.chunk_of[item.position]].update(item.outputs)
        self.groups_left.setdefault(item.position, item.groups)
        if item.image is None or item.masks.shape[0] == 0:
            return self._group_done(item)
        self.pending.append(item)
        masks = sum(p.masks.shape[0] for p in self.pending)
        if masks >= self.options.max_masks_per_batch or len(self.pending) >= self.options.images_per_batch:
            return self.flush()
        return 0

    def flush(self) -> int:
        items, self.pending = self.pending, []
        if not items:
            return 0
        start = time.perf_counter()
        results = self._refine(items)
        self.model_seconds += time.perf_counter() - start
        completed = 0
        for item, result in zip(items, results):
            refined = result.refined
            fresh = refined_outputs(item.masks[refined], result.masks[refined], result.iou_predictions[refined])
            chunk_outputs = self.outputs[self.chunk_of[item.position]]
            for slot, index in enumerate(item.record_indices):
                if not refined[slot]:
                    chunk_outputs[index] = passed_output(item.rles[slot], result.passed_through[slot])
            for index, output in zip(np.asarray(item.record_indices)[refined].tolist(), fresh):
                chunk_outputs[index] = output
            if self.uncertainty is not None:
                self._record_uncertainty(item, result, chunk_outputs)
            self.masks_done += len(item.record_indices)
            completed += self._group_done(item)
        return completed

    def _record_uncertainty(self, item: WorkItem, result: RefineResult, chunk_outputs: Dict[int, Dict[str, Any]]) -> None:
        maps = self.maps[self.chunk_of[item.position]]
        for slot, index in enumerate(item.record_indices):
            if result.refined[slot]:
                entry, summary = self.uncertainty.record(index, item.masks[slot], result.masks[slot], result.probabilities[slot])
                maps[index] = entry
                chunk_outputs[index][INFO_KEY].update(summary)

    def _refine(self, items: Sequence[WorkItem]) -> List[RefineResult]:
        """Whole images go through ``refine_batch``; an image split into several mask groups (large image,
        many masks) is encoded once when the refiner exposes its embedding step (SAMRefiner does)."""
        whole = [i for i, item in enumerate(items) if item.groups == 1]
        results: List[Optional[RefineResult]] = [None] * len(items)
        soft = {"probabilities": True} if self.uncertainty is not None else {}
        if whole:
            batch = self.refiner.refine_batch([items[i].image for i in whole], [items[i].masks for i in whole], **soft)
            for i, result in zip(whole, batch):
                results[i] = result
        for i, item in enumerate(items):
            if item.groups == 1:
                continue
            if hasattr(self.refiner, "refine_with_embedding") and hasattr(self.refiner, "engine"):
                if item.position not in self.embeddings:
                    self.embeddings[item.position] = self.refiner.encode([item.image])[0]
                results[i] = self.refiner.refine_with_embedding(self.embeddings[item.position], item.masks, self.refiner.margin, **soft)
            else:
                results[i] = self.refiner.refine(item.image, item.masks, **soft)
        return results  # type: ignore[return-value]

    def _group_done(self, item: WorkItem) -> int:
        self.groups_left[item.position] -= 1
        if self.groups_left[item.position] > 0:
            return 0
        del self.groups_left[item.position]
        self.embeddings.pop(item.position, None)
        self.images_done += 1
        chunk = self.chunk_of[item.position]
        self.images_left[chunk] -= 1
        if self.images_left[chunk] == 0:
            maps = self.maps.pop(chunk, {}) if self.uncertainty is not None else None
            self.workdir.write_chunk(chunk, self.outputs.pop(chunk), maps)
        return 1


def _process(works, chunk_of, chunk_images, refiner, workdir, options, ranks, uncertainty=None) -> _Refining:
    dataset = ImageWorkDataset(
        works,
        min_area=options.min_area,
        skip_missing_images=options.skip_missing_images,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=options.workers,
        collate_fn=keep_items,
        prefetch_factor=4 if options.workers > 0 else None,
    )
    state = _Refining(refiner, workdir, chunk_of, chunk_images, options, uncertainty)
    start = time.perf_counter()
    bar = tqdm(total=len(works), desc=f"refining (rank {ranks.rank})" if ranks.world_size > 1 else "refining",
               unit="img", disable=not (options.progress and ranks.is_main), smoothing=0.05)
    for item in loader:
        done = state.add(item)
        if done:
            bar.update(done)
            bar.set_postfix_str(f"{state.masks_done / max(time.perf_counter() - start, 1e-9):.1f} masks/s", refresh=False)
    bar.update(state.flush())
    bar.close()
    if state.groups_left or state.images_left and any(state.images_left.values()):
        raise RuntimeError(f"internal error: images left unfinished: {sorted(state.groups_left)[:10]}")
    return state


def _merge(annotations: AnnotationFile, plan: Plan, workdir: WorkDir, num_chunks: int, output_path: str, options: JobOptions) -> Summary:
    keep_coarse = options.keep_coarse
    outputs: Dict[int, Dict[str, Any]] = {index: copied_output(reason) for index, reason in plan.copied.items()}
    for chunk in tqdm(range(num_chunks), desc="merging", unit="chunk", disable=num_chunks < 50):
        outputs.update(workdir.read_chunk(chunk))
    missing = [i for i in range(len(annotations.records)) if i not in outputs]
    if missing:
        raise RuntimeError(f"internal error: {len(missing)} records have no output (first: record #{missing[0]}); nothing written")
    for index, record in enumerate(annotations.records):
        output = outputs[index]
        if keep_coarse and output[INFO_KEY]["status"] == STATUS_REFINED:
            coarse = record.get("segmentation")
            if isinstance(coarse, dict) and isinstance(coarse.get("counts"), bytes):
                coarse = {**coarse, "counts": coarse["counts"].decode("ascii")}
            record["coarse_segmentation"] = coarse
        record.update(output)
    sidecar = ""
    if options.uncertainty:  # before the output: a merge killed in between redoes both, to the same bytes
        key_kind, keys = record_keys(annotations)
        parts = [workdir.read_maps(chunk) for chunk in range(num_chunks)]
        sidecar = os.path.abspath(write_sidecar(parts, keys, key_kind, output_path, options, options.result_options()))
    write_annotation_file(annotations, output_path)
    summary = Summary(output=os.path.abspath(output_path), complete=True, images=len(plan.images), uncertainty_file=sidecar)
    summary.count_outputs(outputs[i] for i in range(len(annotations.records)))
    return summary


def refine_annotation_file(
    input_path: str,
    image_dir: str,
    output_path: str,
    options: Optional[JobOptions] = None,
    refiner: Optional[Refiner] = None,
) -> Summary:
    """Refine every mask record of ``input_path`` and write the same kind of file to ``output_path``.

    Args:
        input_path: COCO annotation file, COCO result list (.json) or Detectron2 ``instances_predictions.pth``.
        image_dir: directory the records' ``file_name`` s are relative to.
        output_path: the output file, the same kind as the input (``.json``, or ``.pth`` / ``.pt`` for a
            Detectron2 file); ``output_path + '.work/'`` holds the resumable state (removed at the end
            unless ``keep_work_dir`` or a ``shard`` split) and :func:`summary_path` the summary.
        options: see :class:`JobOptions`.
        refiner: an already built refiner (e.g. the one a training hook holds); built from the options
            otherwise. When given, its settings must match ``options`` for resume checks to mean anything.

    Returns:
        the :class:`Summary`; ``complete`` is False on a process that did not write the output (a rank > 0,
        or a ``--shard`` whose siblings are not done yet).

    Raises:
        JobInputError: bad records or images that the options do not allow, an output named like another
            kind of file or naming an input file, before any work (a refused run leaves no ``.work/``).
        WorkDirMismatchError: the work directory holds a half-done job with other inputs or options.
        RefinerUnavailableError: ``--refiner phoenix`` without a readable refiner checkpoint.
    """
    options = options or JobOptions()
    options.validate()
    _check_output_path(input_path, output_path, options)
    if refiner is None:
        check_refiner_options(options)  # before anything is read
    ranks = init_ranks()
    try:
        return _run(input_path, image_dir, output_path, options, refiner, ranks)
    finally:
        ranks.close()


def _check_output_path(input_path: str, output_path: str, options: JobOptions) -> None:
    """The output is the input's kind (its name must say so) and overwrites none of the job's inputs."""
    suffixes = written_suffixes(input_path)
    if not os.fspath(output_path).lower().endswith(suffixes):
        kind = "a torch archive (Detectron2 predictions)" if suffixes == TORCH_SUFFIXES else "JSON"
        raise JobInputError(f"output {output_path}: the output is the same kind of file as the input {input_path}, "
                            f"{kind}, so its name must end in {' or '.join(suffixes)}")
    inputs = {"input": input_path, "image info": options.image_info, "checkpoint": options.checkpoint,
              "IoU adapter": options.refiner_kwargs.get("iou_adapter")}
    for written in (output_path, summary_path(os.fspath(output_path))):
        for name, path in inputs.items():
            if path is not None and same_file(written, path):
                raise JobInputError(f"output {written} is the {name} file {path}: refusing to overwrite an input")


def _run(input_path, image_dir, output_path, options: JobOptions, refiner, ranks: Ranks) -> Summary:
    started = time.perf_counter()
    annotations = load_annotation_file(input_path, options.image_info)
    if options.limit is not None:
        annotations = limit_images(annotations, options.limit)
    plan = build_plan(annotations, image_dir, score_thr=options.score_thr, skip_invalid_records=options.skip_invalid_records)
    coarse_maps = open_coarse_probabilities(options, annotations, plan, input_path)
    warnings = input_warnings(annotations)
    if ranks.is_main:
        for warning in warnings:  # now, not only in the summary: the job may run for days
            logger.warning(f"warning: {input_path}: {warning}")
    workdir = WorkDir(work_dir_for(output_path))
    # Only an unsplit job owns its work directory: --shard parts share it and may be running now.
    owns_workdir = not os.path.exists(workdir.root) and options.shard[1] == 1
    if ranks.is_main:
        workdir.open(_manifest(input_path, options, plan, annotations))
    ranks.barrier()
    if not ranks.is_main:
        workdir.open(_manifest(input_path, options, plan, annotations))
    try:
        return _work(input_path, output_path, options, refiner, ranks, annotations, plan, workdir, started, coarse_maps,
                     warnings)
    except BaseException:
        # Stopped before any chunk was finished (bad images, a checkpoint that does not load...): a work
        # directory this run created holds nothing worth keeping.
        if ranks.is_main and owns_workdir and not workdir.done_chunks():
            workdir.remove()
        raise


def _work(input_path, output_path, options: JobOptions, refiner, ranks: Ranks, annotations: AnnotationFile,
          plan: Plan, workdir: WorkDir, started: float, coarse_maps, warnings: List[str]) -> Summary:
    chunks = plan.chunks(options.chunk_size)

    part = options.shard[0] * ranks.world_size + ranks.rank
    parts = options.shard[1] * ranks.world_size
    done = workdir.done_chunks()
    mine = [k for k in range(len(chunks)) if k % parts == part and k not in done]
    works = [work for k in mine for work in chunks[k]]
    problems = check_images(
        works,
        skip_missing_images=options.skip_missing_images,
        skip_invalid_records=options.skip_invalid_records,
        progress=options.progress and ranks.is_main,
    )
    if ranks.any(bool(problems)):
        raise JobInputError(
            "stopped before any work: " + ("\n".join(problems) if problems else "another rank found missing images or invalid records; see its log")
        )

    summary = Summary(images=len(plan.images))
    if works:
        if refiner is None and any(work.needs_pixels for work in works):
            refiner = build_job_refiner(options, ranks)
        chunk_of = {work.position: k for k in mine for work in chunks[k]}
        recorder = UncertaintyRecorder(options, record_keys(annotations)[1], coarse_maps) if options.uncertainty else None
        state = _process(works, chunk_of, {k: len(chunks[k]) for k in mine}, refiner, workdir, options, ranks, recorder)
        summary.images_done_this_run = state.images_done
        summary.masks_done_this_run = state.masks_done
        summary.model_seconds = state.model_seconds
    ranks.barrier()

    if ranks.is_main and len(workdir.done_chunks() & set(range(len(chunks)))) == len(chunks):
        merged = _merge(annotations, plan, workdir, len(chunks), output_path, options)
        merged.images_done_this_run = summary.images_done_this_run
        merged.masks_done_this_run = summary.masks_done_this_run
        merged.model_seconds = summary.model_seconds
        merged.input_warnings = list(warnings)
        summary = merged
        summary.seconds = time.perf_counter() - started
        write_summary(summary, output_path)
        # With --shard, another part may still be reading the chunks (several can finish at once and
        # all merge), and a part retried by the scheduler finds the job done: the directory stays.
        if not options.keep_work_dir and options.shard[1] == 1:
            workdir.remove()
    summary.seconds = time.perf_counter() - started
    return summary
