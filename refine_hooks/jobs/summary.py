"""What a finished job did, counted from the merged outputs."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional

from ..data.annotations import atomic_write
from .worker import INFO_KEY, STATUS_COPIED, STATUS_PASSED, STATUS_REFINED


@dataclasses.dataclass
class Summary:
    """Counts over every record of the output file, plus this run's throughput.

    Attributes:
        output: the output file ('' when this process did not merge: a rank > 0 or an unfinished shard).
        complete: every chunk was done and the output file was written.
        records: records in the output (equals the input's, or the first ``--limit`` images' records).
        refined, passed_through, copied: how many records had each fate; the last two by reason.
        mean_iou_coarse_refined: mean IoU between the coarse and the refined mask over refined records.
        mean_pred_iou: mean predicted IoU over refined records.
        images: images that had records; images_done_this_run: those this process refined now.
        masks_done_this_run, seconds, model_seconds: throughput of this run; ``model_seconds`` is the
            time spent inside the refiner (the rest went to waiting for data and writing results).
        uncertainty_file: the uncertainty sidecar (``--uncertainty``), else ''.
        mean_certainty, mean_certain_fraction: means of the refined records' ``mean_certainty`` and
            ``certain_fraction`` (``--uncertainty``), else None.
        input_warnings: what the input holds that the output keeps but training frameworks will not take
            (:func:`refine_hooks.jobs.plan.input_warnings`).
    """

    output: str = ""
    complete: bool = False
    records: int = 0
    refined: int = 0
    passed_through: Dict[str, int] = dataclasses.field(default_factory=dict)
    copied: Dict[str, int] = dataclasses.field(default_factory=dict)
    mean_iou_coarse_refined: Optional[float] = None
    mean_pred_iou: Optional[float] = None
    images: int = 0
    images_done_this_run: int = 0
    masks_done_this_run: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    uncertainty_file: str = ""
    mean_certainty: Optional[float] = None
    mean_certain_fraction: Optional[float] = None
    input_warnings: List[str] = dataclasses.field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images_done_this_run / self.seconds if self.seconds > 0 else 0.0

    @property
    def masks_per_second(self) -> float:
        return self.masks_done_this_run / self.seconds if self.seconds > 0 else 0.0

    def count_outputs(self, outputs: Iterable[Dict[str, Any]]) -> None:
        """Fill the record counts and means from output dicts (see :mod:`refine_hooks.jobs.worker`)."""
        passed, copied = Counter(), Counter()
        ious, preds, certainty, certain = [], [], [], []
        self.records = self.refined = 0
        for output in outputs:
            info = output[INFO_KEY]
            self.records += 1
            if info["status"] == STATUS_REFINED:
                self.refined += 1
                ious.append(info["iou_coarse_refined"])
                if info["pred_iou"] is not None:
                    preds.append(info["pred_iou"])
                if info.get("mean_certainty") is not None:
                    certainty.append(info["mean_certainty"])
                if info.get("certain_fraction") is not None:
                    certain.append(info["certain_fraction"])
            elif info["status"] == STATUS_PASSED:
                passed[info["reason"]] += 1
            elif info["status"] == STATUS_COPIED:
                copied[info["reason"].split(":", 1)[0]] += 1
        self.passed_through = dict(sorted(passed.items()))
        self.copied = dict(sorted(copied.items()))
        self.mean_iou_coarse_refined = round(sum(ious) / len(ious), 4) if ious else None
        self.mean_pred_iou = round(sum(preds) / len(preds), 4) if preds else None
        self.mean_certainty = round(sum(certainty) / len(certainty), 4) if certainty else None
        self.mean_certain_fraction = round(sum(certain) / len(certain), 4) if certain else None

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["images_per_second"] = round(self.images_per_second, 3)
        data["masks_per_second"] = round(self.masks_per_second, 3)
        return data

    def text(self) -> str:
        """Human-readable lines for the end of a run."""
        lines = [
            f"records: {self.records}  refined: {self.refined}  passed through: {sum(self.passed_through.values())}"
            f"  copied: {sum(self.copied.values())}",
        ]
        if self.passed_through:
            lines.append("  passed through: " + ", ".join(f"{k} {v}" for k, v in self.passed_through.items()))
        if self.copied:
            lines.append("  copied unchanged: " + ", ".join(f"{k} {v}" for k, v in self.copied.items()))
        if self.mean_iou_coarse_refined is not None:
            lines.append(
                f"mean IoU(coarse, refined): {self.mean_iou_coarse_refined:.4f}"
                f" (mean change 1 - IoU: {1 - self.mean_iou_coarse_refined:.4f});"
                f" mean predicted IoU: {self.mean_pred_iou if self.mean_pred_iou is not None else 'n/a'}"
            )
        if self.seconds > 0:
            lines.append(
                f"this run: {self.images_done_this_run} images, {self.masks_done_this_run} masks in {self.seconds:.1f} s"
                f" ({self.images_per_second:.2f} images/s, {self.masks_per_second:.2f} masks/s,"
                f" {100 * (1 - self.model_seconds / self.seconds):.0f}% of the time outside the refiner)"
            )
        if self.mean_certainty is not None:
            lines.append(f"uncertainty: mean certainty {self.mean_certainty:.4f}, mean fraction of a refined mask that is "
                         f"certain {self.mean_certain_fraction if self.mean_certain_fraction is not None else 'n/a'}")
        lines.extend(f"warning: {warning}" for warning in self.input_warnings)
        if self.output:
            lines.append(f"wrote {self.output}")
        if self.uncertainty_file:
            lines.append(f"wrote {self.uncertainty_file}")
        return "\n".join(lines)


def summary_path(output_path: str) -> str:
    """The summary next to the output file: ``x.json`` -> ``x.summary.json``, ``x.pth`` ->
    ``x.pth.summary.json`` (only ``.json`` is dropped, so outputs ``x.json`` and ``x.pth`` keep apart)."""
    root = output_path[: -len(".json")] if output_path.lower().endswith(".json") else output_path
    return f"{root}.summary.json"


def write_summary(summary: Summary, output_path: str) -> str:
    path = summary_path(output_path)
    atomic_write(path, lambda handle: json.dump(summary.to_dict(), handle, indent=1))
    return path
