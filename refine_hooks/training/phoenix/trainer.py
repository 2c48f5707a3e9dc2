"""The refiner training loop: a small loop, everything else a hook (Detectron2's ``SimpleTrainer`` /
``HookBase`` and fvcore's ``PeriodicCheckpointer`` are the models).

Resumable by design: the work directory's ``last.pth`` holds the trained modules, CMRL's projector, the
optimiser, the scheduler, the loss scaler, the RNG states and the number of finished iterations; every
random draw of an iteration derives from the seed and the iteration (:mod:`.data`), so rerunning the same
command after a crash continues exactly where the checkpoint left off: on CPU the resumed run ends with
the same weights, bit for bit, as an uninterrupted one.

Several processes (``torchrun``): each takes its share of every global batch, and gradients are summed
over processes with one all-reduce per step before clipping (not torch's DDP wrapper: an iteration calls
the decoder several times per sample, through AMP and the cascade). With the same global batch the
result equals one process's, up to the order of floating-point sums.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ...files import flatten_settings
from ...sam.engine import SamEngine
from ...sam.refiner_weights import TASKS, sam_fingerprint, save_refiner_checkpoint, trained_state
from ...timing import NullTimer
from .cmrl import Projector
from .config import TrainingConfig
from .data import SampleLoader, Source, TargetRef
from .embeddings import EmbeddingCache
from .step import LOSS_TERMS, STATISTICS, RefinerStep
from .tasks import TaskPrompt, default_task, task_prompt_enabled

CHECKPOINT = "last.pth"
LOG = "log.jsonl"


class TrainingResumeError(RuntimeError):
    """The work directory holds a run with other settings, data or SAM; the message names the difference."""


@dataclasses.dataclass
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """``cuda`` means this process's GPU under torchrun."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.world_size > 1 else device

    @classmethod
    def from_environment(cls, device: str) -> "Ranks":
        """Join ``torchrun``'s process group (NCCL on CUDA, gloo on CPU), or a single process."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Wait for every process, and end the process group when this code started it."""
        self.barrier()
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def warmup_cosine(warmup: int, total: int):
    """lr factor per step: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (B.2)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class HookBase:
    """Called by :class:`RefinerTrainer` around training; ``self.trainer`` is set before ``before_train``."""

    trainer: "RefinerTrainer"

    def before_train(self) -> None:
        pass

    def after_step(self, iteration: int, stats: Dict[str, float]) -> None:
        pass

    def after_train(self) -> None:
        pass


def _rng_states() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if torch.cuda.is_available() and states.get("cuda"):
        torch.cuda.set_rng_state_all(states["cuda"])


class RefinerTrainer:
    """Trains a refiner (Phoenix, or SUM's mask-refinement module with ``noise="sam"``) on a frozen SAM.

    Args:
        sam: the pre-trained SAM (its weights are never changed: the trained modules are copies).
        sources: the training data.
        config: training settings.
        work_dir: checkpoints and the log; a rerun with the same arguments resumes from it.
        device: ``cpu``, ``cuda``, ``cuda:N`` (under torchrun: ``cuda`` becomes ``cuda:LOCAL_RANK``).
        sam_info: what the SAM is (``model_type``, ``checkpoint``), stored in checkpoints for messages.
        cache_dir: embedding cache (:class:`EmbeddingCache`), or None.
        workers: DataLoader workers decoding images.
        hooks: extra hooks (logging and checkpointing hooks are added by :func:`default_hooks`).
    """

    def __init__(self, sam: torch.nn.Module, sources: Sequence[Source], config: TrainingConfig, *, work_dir: str,
                 device: str = "cpu", sam_info: Optional[Dict[str, Any]] = None, cache_dir: Optional[str] = None,
                 workers: int = 2, hooks: Sequence[HookBase] = (), ranks: Optional[Ranks] = None, timer=None):
        config.validate()
        self.config = config
        self.ranks = ranks or Ranks()
        device = self.ranks.device(device)
        if config.batch_size % self.ranks.world_size:
            raise ValueError(f"the global batch ({config.batch_size}) must split evenly over {self.ranks.world_size} processes")
        self.work_dir = work_dir
        self.sam_info = dict(sam_info or {})
        for parameter in sam.parameters():
            parameter.requires_grad_(False)
        self.engine = SamEngine(sam, device=device)
        self.fingerprint = sam_fingerprint(sam)
        self.sources = list(sources)
        self.refs: List[TargetRef] = [ref for index, source in enumerate(self.sources) for ref in source.refs(index)]
        if not self.refs:
            raise ValueError("the training data holds no usable target mask")
        self.cache = EmbeddingCache(cache_dir, self.fingerprint) if cache_dir else None
        self.jitter = 0.0 if self.cache is not None else config.colour_jitter
        self.trained = torch.nn.ModuleDict({"prompt_encoder": copy.deepcopy(sam.prompt_encoder),
                                            "mask_decoder": copy.deepcopy(sam.mask_decoder)}).to(self.engine.device)
        self.trained.train()
        self.trained["prompt_encoder"].requires_grad_(config.train_prompt_encoder)
        self.trained["mask_decoder"].requires_grad_(True)
        self.projector = None
        if config.cmrl.enabled:
            channels = sam.mask_decoder.transformer_dim // 8
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self.projector = Projector(channels, config.cmrl.projector_layers).to(self.engine.device)
        # SUM's task prompt (Sec. 3.2.4): zero at the start, trained with the decoder (not in ``trained``, whose
        # keys the checkpoints of runs without it keep).
        self.task_prompt = None
        if task_prompt_enabled(config.task_prompt, self.sources):
            self.task_prompt = TaskPrompt(sam.prompt_encoder.embed_dim).to(self.engine.device)
        self.default_task = default_task(self.sources, self.refs)
        self.parameters = [p for p in self.trained.parameters() if p.requires_grad]
        if self.projector is not None:
            self.parameters += list(self.projector.parameters())
        if self.task_prompt is not None:
            self.parameters += list(self.task_prompt.parameters())
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(config.warmup, config.iterations))
        self.scaler = torch.amp.GradScaler(self.engine.device.type, enabled=config.precision == "fp16" and self.engine.device.type == "cuda")
        self.timer = timer or NullTimer()
        self.step_fn = RefinerStep(self.engine, self.trained, self.projector, config, self.cache, timer=self.timer,
                                   task_prompt=self.task_prompt)
        local = config.batch_size // self.ranks.world_size
        slots = range(self.ranks.rank * local, (self.ranks.rank + 1) * local)
        self.loader = SampleLoader(self.sources, self.refs, batch_size=config.batch_size, slots=slots,
                                   hflip=config.hflip, jitter=self.jitter, seed=config.seed)
        self.workers = workers
        self.iteration = 0  # finished iterations
        self.hooks: List[HookBase] = []
        for hook in hooks:
            self.register(hook)

    def register(self, hook: HookBase) -> None:
        hook.trainer = self
        self.hooks.append(hook)

    # ------------------------------------------------------------------ state
    def identity(self) -> Dict[str, Any]:
        """What must not change between a run and its resume: settings, data, the SAM."""
        return {"config": self.config.to_dict(), "sam_fingerprint": self.fingerprint,
                "data": {"sources": [source.name for source in self.sources], "samples": len(self.refs)}}

    def state_dict(self) -> Dict[str, Any]:
        return {
            "iteration": self.iteration,
            "identity": self.identity(),
            "trained": self.trained.state_dict(),
            "projector": self.projector.state_dict() if self.projector is not None else None,
            "task_prompt": self.task_prompt.state_dict() if self.task_prompt is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_states(),
            "sam": self.sam_info,
        }

    def load_state_dict(self, state: Dict[str, Any], source: str) -> None:
        mine = flatten_settings(self.identity())
        theirs = flatten_settings(state["identity"])
        differences = sorted(key for key in set(mine) | set(theirs) if mine.get(key) != theirs.get(key))
        if differences:
            shown = "; ".join(f"{key}: {theirs.get(key)!r} there, {mine.get(key)!r} now" for key in differences[:6])
            raise TrainingResumeError(f"{source} holds a run with other settings, data or SAM ({shown}); rerun with the "
                                      "same arguments to resume, or use another --work-dir")
        self.trained.load_state_dict(state["trained"])
        if self.projector is not None:
            self.projector.load_state_dict(state["projector"])
        if (self.task_prompt is not None) != (state.get("task_prompt") is not None):
            raise TrainingResumeError(f"{source} holds a run {'without' if self.task_prompt is not None else 'with'} "
                                      "SUM's task prompt (written by a version that decided it otherwise); use another "
                                      "--work-dir")
        if self.task_prompt is not None:
            self.task_prompt.load_state_dict(state["task_prompt"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_states(state["rng"])
        self.iteration = int(state["iteration"])

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.work_dir, CHECKPOINT)

    def save_checkpoint(self) -> None:
        """Write ``last.pth`` atomically (rank 0)."""
        if not self.ranks.is_main:
            return
        os.makedirs(self.work_dir, exist_ok=True)
        tmp = self.checkpoint_path + f".tmp{os.getpid()}"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.checkpoint_path)

    def resume(self) -> bool:
        """Load ``last.pth`` when the work directory has one; True when it did."""
        if not os.path.isfile(self.checkpoint_path):
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.engine.device, weights_only=False)
        except Exception as error:  # noqa: BLE001 - not ours, or damaged
            raise TrainingResumeError(f"{self.checkpoint_path} cannot be read ({type(error).__name__}: {error}); "
                                      "remove it to start over") from None
        self.load_state_dict(state, self.checkpoint_path)
        return True

    def save_refiner(self, path: str) -> str:
        """Write the refiner checkpoint: trained prompt encoder and mask decoder (no projector), and the task
        prompt when it trained (with the default task: :func:`.tasks.default_task`)."""
        task_prompt = None
        if self.task_prompt is not None:
            task_prompt = {"embedding": self.task_prompt.embedding.weight, "tasks": TASKS,
                           "default": TASKS[self.default_task]}
        save_refiner_checkpoint(path, weights=trained_state(self.trained), fingerprint=self.fingerprint,
                                kind=self.config.kind, mask_prompt=self.config.mask_prompt(),
                                prompts=self.config.prompt_settings(), training=self.config.to_dict(), sam=self.sam_info,
                                task_prompt=task_prompt)
        return path

    # ------------------------------------------------------------------ the loop
    def batches(self):
        """This rank's samples of every remaining iteration, loaded ahead by DataLoader workers."""
        loader = torch.utils.data.DataLoader(
            self.loader, batch_size=None, sampler=range(self.iteration, self.config.iterations),
            num_workers=self.workers, collate_fn=_keep_samples,
            prefetch_factor=2 if self.workers > 0 else None, persistent_workers=False)
        return iter(loader)

    def run_step(self, samples) -> Dict[str, float]:
        """One optimiser step on this rank's ``samples`` of the global batch; returns the step's statistics
        summed over ranks."""
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        result = self.step_fn(samples, self.config.batch_size)
        with self.timer("backward"):
            if result.loss is not None:
                self.scaler.scale(result.loss).backward()
        for parameter in self.parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        if self.ranks.world_size > 1:
            flat = torch.cat([p.grad.flatten() for p in self.parameters])
            self.ranks.sum(flat)
            offset = 0
            for parameter in self.parameters:
                parameter.grad.copy_(flat[offset : offset + parameter.numel()].view_as(parameter))
                offset += parameter.numel()
        with self.timer("optimizer"):
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
            lr = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        self.iteration += 1
        unknown = set(result.sums) - set(STATISTICS)
        if unknown:
            raise RuntimeError(f"internal error: step statistics {sorted(unknown)} are not in STATISTICS")
        summed = self.ranks.sum(torch.tensor([float(result.sums.get(k, 0.0)) for k in STATISTICS], dtype=torch.float64))
        stats = dict(zip(STATISTICS, summed.tolist()))
        stats.update(lr=lr, grad_norm=float(grad_norm), seconds=time.perf_counter() - started)
        return stats

    def train(self) -> None:
        """Train from the current iteration to ``config.iterations``, calling the hooks."""
        for hook in self.hooks:
            hook.before_train()
        if self.iteration < self.config.iterations:
            for samples in self.batches():
                stats = self.run_step(samples)
                for hook in self.hooks:
                    hook.after_step(self.iteration, stats)
        for hook in self.hooks:
            hook.after_train()


def _keep_samples(samples):
    """DataLoader ``collate_fn``: an iteration's samples stay a list."""
    return samples


# ---------------------------------------------------------------------------------------------- hooks
def summarise(stats: Dict[str, float]) -> Dict[str, float]:
    """Per-pair means of the loss terms and the AMP / skip counters of one step, as the log writes them."""
    pairs = max(stats.get("pairs", 0.0), 1.0)
    row = {name: stats.get(name, 0.0) / pairs for name in LOSS_TERMS}  # CMRL's terms are 0 when it is off
    masks = stats.get("amp_masks", 0.0)
    if masks:
        row["amp_updates_per_mask"] = stats.get("amp_updates", 0.0) / masks
        for outcome in ("hit", "overshot", "missed", "started_below"):
            row[f"amp_{outcome}"] = stats.get(f"amp_{outcome}", 0.0) / masks
    for name in ("samples", "skipped_small_target", "sam_rejected", "amp_empty_replaced", "cascade_empty", "prompts_dropped"):
        if stats.get(name):
            row[name] = stats[name]
    if stats.get("ua_pairs"):  # pseudo-targets with SUM's certainty map: its mean and share above θ
        row["ua_pairs"] = stats["ua_pairs"]
        row["certainty"] = stats["certainty"] / stats["ua_pairs"]
        row["certain_fraction"] = stats["certain_fraction"] / stats["ua_pairs"]
    row["lr"] = stats["lr"]
    row["grad_norm"] = stats["grad_norm"]
    row["seconds"] = stats["seconds"]
    row["samples_per_s"] = stats.get("samples", 0.0) / max(stats["seconds"], 1e-9)
    return row


class PeriodicCheckpointer(HookBase):
    """Writes ``last.pth`` every ``period`` iterations and at the end."""

    def __init__(self, period: int):
        self.period = max(1, period)

    def after_step(self, iteration: int, stats: Dict[str, float]) -> None:
        if iteration % self.period == 0 and iteration < self.trainer.config.iterations:
            self.trainer.save_checkpoint()

    def after_train(self) -> None:
        self.trainer.save_checkpoint()


# AMP's start is judged once, on the first this many noisy masks (or all of a shorter run's).
AMP_START_CHECK_MASKS = 64
# Above this share of masks starting below their band, AMP is mostly not perturbing anything.
AMP_START_BELOW_WARNING = 0.5


def amp_start_warning(masks: float, started_below: float, tau_range) -> Optional[str]:
    """The warning for a run whose frozen decoder starts below AMP's band for most noisy masks, or None.

    FGSM only lowers a mask's IoU with its target (Algorithm 1), so a mask that starts below τ is returned
    as the frozen decoder made it: the "noise" is then the decoder's own error, not a perturbation."""
    if not masks or started_below / masks <= AMP_START_BELOW_WARNING:
        return None
    low, high = tau_range
    return (f"warning: AMP: for {started_below / masks:.0%} of the first {int(masks)} noisy masks the frozen SAM's own "
            f"mask (from the target's points and box) was already below the IoU band (tau ~ U({low:g}, {high:g})), so "
            "AMP returned it unperturbed. Phoenix's AMP assumes a decoder that segments the targets from their prompts: "
            "check the SAM checkpoint and the annotations, or use --noise morphological / --p-morph")


class MetricsLogger(HookBase):
    """JSON lines (``log.jsonl``: one per iteration, every term), TensorBoard event files when
    ``tensorboard`` is installed, a progress bar with the loss terms and ETA, and one warning when AMP's
    frozen decoder starts below the band for most masks (:func:`amp_start_warning`) (rank 0 only).

    On resume the log is cut back to the resumed iteration, so it reads as one run.
    """

    def __init__(self, progress: bool = True, tensorboard: bool = True, note=print):
        self.progress, self.tensorboard, self.note = progress, tensorboard, note
        self.bar = None
        self.writer = None
        self.amp_start = [0.0, 0.0]  # noisy masks, of which started below the band; None once judged

    def before_train(self) -> None:
        trainer = self.trainer
        if not trainer.ranks.is_main:
            return
        os.makedirs(trainer.work_dir, exist_ok=True)
        self.path = os.path.join(trainer.work_dir, LOG)
        kept = []
        if os.path.isfile(self.path):
            with open(self.path) as handle:
                for line in handle:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        break
                    if row.get("iteration", 0) <= trainer.iteration:
                        kept.append(line if line.endswith("\n") else line + "\n")
        with open(self.path, "w") as handle:
            handle.writelines(kept)
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(trainer.work_dir, "tensorboard"), purge_step=trainer.iteration + 1)
            except ImportError:
                self.note("tensorboard is not installed: no event files (pip install tensorboard)")
        self.bar = tqdm(total=trainer.config.iterations, initial=trainer.iteration, desc="training", unit="it",
                        disable=not self.progress, dynamic_ncols=True)

    def after_step(self, iteration: int, stats: Dict[str, float]) -> None:
        if not self.trainer.ranks.is_main:
            return
        row = {"iteration": iteration, **summarise(stats)}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.amp_start is not None and stats.get("amp_masks"):
            self.amp_start[0] += stats["amp_masks"]
            self.amp_start[1] += stats.get("amp_started_below", 0.0)
            if self.amp_start[0] >= AMP_START_CHECK_MASKS:
                self._judge_amp_start()
        if self.writer is not None:
            for key, value in row.items():
                if key != "iteration":
                    self.writer.add_scalar(key, value, iteration)
        if self.bar is not None:
            shown = {k: f"{row[k]:.3g}" for k in ("loss", "focal", "dice", "iou", "cmrl") if k in row}
            if "amp_updates_per_mask" in row:
                shown["amp"] = f"{row['amp_updates_per_mask']:.1f}"
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)

    def _judge_amp_start(self) -> None:
        warning = amp_start_warning(*self.amp_start, self.trainer.config.amp.tau_range)
        self.amp_start = None
        if warning:
            if self.bar is not None:
                self.bar.clear()
            self.note(warning)

    def after_train(self) -> None:
        if self.trainer.ranks.is_main and self.amp_start is not None and self.amp_start[0]:
            self._judge_amp_start()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def default_hooks(checkpoint_every: int, progress: bool = True, note=print) -> List[HookBase]:
    return [MetricsLogger(progress=progress, note=note), PeriodicCheckpointer(checkpoint_every)]
