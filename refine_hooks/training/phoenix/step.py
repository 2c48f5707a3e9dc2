"""One training step of a refiner: noisy masks in, losses out (Phoenix Sec. 3.2-3.4, B.2-B.3; SUM D).

For each sample (one target mask of one image) the step
1. makes a noisy mask: AMP from the frozen SAM (``adversarial``), SAM's one-point pseudo-label fed as
   logits (``sam``), or a morphological perturbation (``morphological``, and ``p_morph`` mixing);
2. feeds it to the trained prompt encoder + mask decoder with EXACTLY the prompts inference uses (mined by
   :meth:`SAMRefiner.prompts_for` on the image at its own size, the mask prompt in the checkpoint's
   encoding); with probability 0.3 the points and box are dropped and only the mask goes in;
3. scores SAM's three candidates against the target on the decoder's low-res frame: focal and Dice
   (20 : 1) for the candidate with the lowest mask loss (SAM's multimask rule: only the best candidate
   learns to segment), the IoU head's MSE for all three, and CMRL on the upscaled embedding with the
   candidate inference would pick (highest predicted IoU) as the refined mask M_r;
4. repeats 2-3 ``cascade_steps`` times on its own detached refined mask (cascade as curriculum).

Pseudo-targets with SUM's certainty map c (``--target-uncertainty``, :mod:`.certainty`) are not trusted
everywhere (SUM Sec. 3.2.1-3.2.2): the map travels with the target to the low-res frame (the same chain,
applied to u = 1 − c, so c = 1 stays exactly 1), the focal loss weights each pixel by c (eq. 1), the Dice
loss and the IoU head's target keep the pixels with c > θ = 0.6 (eq. 2), CMRL's six regions leave out the
pixels with c <= θ (they stay in Ω: which region a pixel is in depends on its target label, its membership
in Ω does not), and ``sam`` noise draws its point with probability c_i / Σ c. A pixel with c = 0 (indeed
any pixel with c <= θ but for its focal weight) has no say through its label. A sample without a map is
certain and trains exactly as before.

With SUM's task prompt (:mod:`.tasks`) the trained decoder sees image embedding + task embedding.

The step's loss is the sum over samples of the mean over cascade steps, divided by the GLOBAL batch size,
so gradients summed over ranks equal one process's gradient of the whole batch. Samples that cannot be
used (target too small, SAM pseudo-label filtered out) add nothing and are counted.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ...refiners.samrefiner import SAMRefiner
from ...resize import apply_to_box
from ...sam.engine import ImageEmbedding, SamEngine
from ...timing import NullTimer
from ...uncertainty.maps import DEFAULT_THETA
from .amp import guidance_masks, perturb
from .cmrl import Projector, cmrl_loss
from .config import TrainingConfig
from .data import NOISE_STREAM, SAMPLING_STREAM, Sample
from .decoder import PromptDecoder, PromptSet, embed_prompts
from .embeddings import EmbeddingCache, encode_for_training
from .losses import dice_loss, focal_loss, mask_ious
from .noise import morphological_noise, sam_pseudo_label

LOSS_TERMS = ("loss", "focal", "dice", "iou", "cmrl", "intra", "inter", "self")
# Everything a step counts (every rank sums the same list, whatever happened on it).
STATISTICS = LOSS_TERMS + ("pairs", "samples", "skipped_small_target", "sam_rejected", "amp_masks", "amp_updates",
                           "amp_hit", "amp_overshot", "amp_missed", "amp_started_below", "amp_empty_replaced", "cascade_empty",
                           "prompts_dropped", "ua_pairs", "certainty", "certain_fraction")


@dataclasses.dataclass
class Prepared:
    """A sample on the decoder's frames, with its noisy input."""

    sample: Sample
    embedding: ImageEmbedding
    target_low: torch.Tensor  # bool m x m
    valid: torch.Tensor  # bool m x m: the image's pixels (not SAM's padding)
    noisy: Optional[np.ndarray] = None  # bool H x W
    noisy_logits: Optional[torch.Tensor] = None  # float m x m (``sam`` noise), the first step's dense input
    noise: str = ""
    certainty: Optional[torch.Tensor] = None  # float m x m, SUM's c of the target (None: 1 everywhere)


@dataclasses.dataclass
class StepResult:
    """What one step computed on this rank: the loss to back-propagate and sums for the log."""

    loss: Optional[torch.Tensor]
    sums: Dict[str, float]  # loss terms summed over (sample, cascade step) pairs, and counts


def low_res_frame_values(engine: SamEngine, embedding: ImageEmbedding, values: np.ndarray, x0: int = 0, y0: int = 0) -> torch.Tensor:
    """float ``m x m``: a map that is float ``values`` on the window at ``(x0, y0)`` and 0 elsewhere, on the
    decoder's low-res frame (SAM's resize-pad-resize chain, as mask prompts are built; 0 in SAM's padding)."""
    rows, cols = engine.mask_input_frame(embedding)
    height, width = values.shape
    tensor = torch.from_numpy(np.ascontiguousarray(values)).to(engine.device).float()
    return apply_to_box(rows, cols, tensor, (x0, y0, x0 + width - 1, y0 + height - 1))


def low_res_frame_masks(engine: SamEngine, embedding: ImageEmbedding, mask: np.ndarray) -> torch.Tensor:
    """bool ``m x m``: a bool ``H x W`` mask on the decoder's low-res frame (:func:`low_res_frame_values` >= 0.5)."""
    return low_res_frame_values(engine, embedding, mask) >= 0.5


def low_res_frame_certainty(engine: SamEngine, embedding: ImageEmbedding, sample: Sample) -> Optional[torch.Tensor]:
    """float ``m x m`` certainty of a sample's target on the low-res frame: ``1 − chain(u)`` with u its (flipped)
    uncertainty map, so a certain map stays exactly 1 (SAM's padding counts as certain; it is no valid pixel);
    None when the sample has no map."""
    window = sample.uncertainty
    if window is None:
        return None
    u = window.values.astype(np.float32) / 255.0
    return 1.0 - low_res_frame_values(engine, embedding, u, window.x0, window.y0)


class RefinerStep:
    """Computes a step's loss for a list of samples (see the module docstring).

    Args:
        engine: the ORIGINAL, frozen SAM (encoder, frames; AMP and SAM noise decode with it).
        trained: ``ModuleDict(prompt_encoder=..., mask_decoder=...)``: the copies being trained.
        projector: CMRL's projector g (None: CMRL off).
        config: training settings.
        cache: embedding cache, or None.
        timer: a :class:`refine_hooks.timing.StageTimer` (benchmark tool): ``encode``, ``noise``, ``decode_loss``.
        task_prompt: SUM's task prompt (:class:`.tasks.TaskPrompt`) added to the image embeddings the trained
            decoder sees, or None.
    """

    def __init__(self, engine: SamEngine, trained: torch.nn.ModuleDict, projector: Optional[Projector],
                 config: TrainingConfig, cache: Optional[EmbeddingCache] = None, timer=None, task_prompt=None):
        self.engine, self.trained, self.projector, self.config, self.cache = engine, trained, projector, config, cache
        self.task_prompt = task_prompt
        self.timer = timer or NullTimer()
        invariant = engine.device.type == "cpu" if config.batch_invariant is None else config.batch_invariant
        model = engine.model
        self.frozen_decoder = PromptDecoder(model.prompt_encoder, model.mask_decoder, batch_invariant=invariant)
        self.trained_decoder = PromptDecoder(trained["prompt_encoder"], trained["mask_decoder"], batch_invariant=invariant)
        prompts = dict(use_point=config.use_point, use_box=config.use_box, add_negative=config.add_negative, margin=0.0)
        # The prompts the trained refiner gets (what the Phoenix refiner mines at inference) ...
        self.prompter = SAMRefiner(engine, use_mask=True, gaussian=config.mask_encoding, strength=config.mask_strength,
                                   gamma=config.mask_gamma, **prompts)
        # ... and AMP's visual prompts E_v of the target (points and box, no mask).
        self.target_prompter = SAMRefiner(engine, use_mask=False, **prompts) if (config.use_point or config.use_box) else None
        self._valid: Dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ preparation and noise
    def prepare(self, samples: Sequence[Sample], counts: Dict[str, float]) -> List[Prepared]:
        """Encode the images and put targets on the low-res frame; too-small targets are counted and dropped."""
        prepared = []
        for sample in samples:
            if int(sample.target.sum()) < self.config.min_area:
                counts["skipped_small_target"] += 1
                continue
            embedding = encode_for_training(self.engine, sample.image, self.cache)
            target_low = low_res_frame_masks(self.engine, embedding, sample.target)
            if not bool(target_low.any()):
                counts["skipped_small_target"] += 1
                continue
            prepared.append(Prepared(sample, embedding, target_low, self._valid_region(embedding),
                                     certainty=low_res_frame_certainty(self.engine, embedding, sample)))
        return prepared

    def _valid_region(self, embedding: ImageEmbedding) -> torch.Tensor:
        size = embedding.original_size
        if size not in self._valid:
            self._valid[size] = low_res_frame_masks(self.engine, embedding, np.ones(size, dtype=bool))
        return self._valid[size]

    @torch.no_grad()
    def make_noise(self, prepared: List[Prepared], counts: Dict[str, float]) -> List[Prepared]:
        """Give every sample its noisy input; returns the samples that got one."""
        adversarial = []
        kept = []
        for item in prepared:
            rng = item.sample.seeds.numpy(NOISE_STREAM)
            kind = "morphological" if rng.random() < self.config.p_morph else self.config.noise
            item.noise = kind
            if kind == "morphological":
                item.noisy = morphological_noise(item.sample.target, rng)
            elif kind == "sam":
                label = sam_pseudo_label(self.engine, item.embedding, item.sample.target, rng, self.config.sam_noise,
                                         certainty=item.sample.certainty())
                if label is None:
                    counts["sam_rejected"] += 1
                    continue
                item.noisy, item.noisy_logits = label.mask, label.logits
            else:
                adversarial.append((item, rng))
            kept.append(item)
        if adversarial:
            self._adversarial(adversarial, counts)
        return kept

    def _adversarial(self, items, counts: Dict[str, float]) -> None:
        config = self.config.amp
        model = self.engine.model
        images = torch.cat([item.embedding.features for item, _ in items])
        no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *model.prompt_encoder.image_embedding_size)
        visual, taus, kinds, initial = [], [], [], []
        for item, rng in items:
            if self.target_prompter is not None:
                prompts = self.target_prompter.prompts_for(item.embedding, item.sample.target[None])
                sparse, _ = embed_prompts(model.prompt_encoder, self.engine, item.embedding, prompts, use_mask=False)
            else:
                sparse = torch.empty((1, 0, model.prompt_encoder.embed_dim), device=self.engine.device)
            visual.append(sparse.to(images.dtype))
            taus.append(float(rng.uniform(*config.tau_range)))
            kinds.append(config.guidance[int(rng.integers(len(config.guidance)))])
            generator = item.sample.seeds.torch(NOISE_STREAM)
            noise = torch.randn((config.num_tokens, sparse.shape[-1]), generator=generator) * config.init_std
            initial.append(noise.to(self.engine.device, images.dtype))

        def decode(perturbation: torch.Tensor, indices: List[int]) -> torch.Tensor:
            sets = [PromptSet(torch.cat([visual[i], perturbation[row : row + 1]], dim=1), no_mask, i)
                    for row, i in enumerate(indices)]
            return self.frozen_decoder(images, sets).logits[:, 0]

        targets = torch.stack([item.target_low for item, _ in items])
        valid = torch.stack([item.valid for item, _ in items])
        result = perturb(decode, torch.stack(initial), targets, guidance_masks(kinds, targets), valid.float(), taus, config)
        for row, (item, rng) in enumerate(items):
            noisy = self.engine.upsample_masks(result.logits[row : row + 1], item.embedding)[0]
            if not noisy.any():  # a contraction can empty a small object: no prompts can be mined from it
                counts["amp_empty_replaced"] += 1
                noisy = morphological_noise(item.sample.target, rng)
            item.noisy = noisy
            counts["amp_masks"] += 1
            counts["amp_updates"] += result.updates[row]
            counts[f"amp_{result.outcomes[row]}"] += 1
            counts["amp_started_below"] += float(result.started_below[row])

    # ------------------------------------------------------------------ the loss
    def __call__(self, samples: Sequence[Sample], global_batch: int) -> StepResult:
        counts: Dict[str, float] = collections.defaultdict(float)
        with self.timer("encode"):
            prepared = self.prepare(samples, counts)
        with self.timer("noise"):
            prepared = self.make_noise(prepared, counts)
        total: Optional[torch.Tensor] = None
        steps = self.config.cascade_steps + 1
        active = prepared
        dropout_rngs = {id(item): item.sample.seeds.numpy(SAMPLING_STREAM) for item in prepared}
        generators = {id(item): item.sample.seeds.torch(SAMPLING_STREAM) for item in prepared}
        for step in range(steps):
            if not active:
                break
            with self.timer("decode_loss"):
                losses, refined = self._forward(active, step, dropout_rngs, generators, counts)
            part = losses.sum() / (steps * global_batch)
            total = part if total is None else total + part
            following = []
            for item, logits in zip(active, refined):
                mask = self.engine.upsample_masks(logits[None], item.embedding)[0]
                if mask.any():
                    item.noisy, item.noisy_logits = mask, None
                    following.append(item)
                else:
                    counts["cascade_empty"] += 1
            active = following
        counts["samples"] += len(prepared)
        return StepResult(total, dict(counts))

    def _autocast(self):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.config.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.engine.device.type, dtype=dtype)

    def _forward(self, items: List[Prepared], step: int, dropout_rngs, generators, counts):
        config = self.config
        prompt_encoder = self.trained["prompt_encoder"]
        sets, noisy_low = [], []
        images = torch.cat([item.embedding.features for item in items])
        if self.task_prompt is not None:  # SUM Sec. 3.2.4: image embedding + task embedding
            images = self.task_prompt(images, [item.sample.task for item in items])
        for row, item in enumerate(items):
            prompts = self.prompter.prompts_for(item.embedding, item.noisy[None])
            if item.noisy_logits is not None:  # SUM: SAM's pseudo-label logits as the mask prompt
                prompts["mask_inputs"] = item.noisy_logits.clamp(-config.mask_strength, config.mask_strength)[None, None]
            if dropout_rngs[id(item)].random() < config.prompt_dropout:
                prompts = {"mask_inputs": prompts["mask_inputs"]}
                counts["prompts_dropped"] += 1
            with self._autocast():
                sparse, dense = embed_prompts(prompt_encoder, self.engine, item.embedding, prompts)
            sets.append(PromptSet(sparse, dense, row))
            noisy_low.append(prompts["mask_inputs"][0, 0].to(self.engine.device) > 0)
        with self._autocast():
            output = self.trained_decoder(images, sets)
        candidates = output.candidates.float()
        predicted = output.candidate_iou.float()
        targets = torch.stack([item.target_low for item in items])
        valid = torch.stack([item.valid for item in items])
        certainty = self._certainty(items, counts)  # B x m x m or None
        certain = None if certainty is None else certainty > DEFAULT_THETA
        focal = focal_loss(candidates, targets, valid, certainty)  # B x 3
        dice = dice_loss(candidates, targets, valid, certainty, DEFAULT_THETA)
        mask_loss = config.focal_weight * focal + config.dice_weight * dice
        best = mask_loss.argmin(dim=1)
        rows = torch.arange(len(items), device=candidates.device)
        iou_loss = ((predicted - mask_ious(candidates, targets, valid if certain is None else valid & certain)) ** 2).mean(dim=1)
        losses = mask_loss[rows, best] + config.iou_weight * iou_loss
        selected = predicted.argmax(dim=1)
        refined = candidates[rows, selected].detach()
        terms = {"focal": focal[rows, best], "dice": dice[rows, best], "iou": iou_loss}
        if self.projector is not None:
            projected = self.projector(output.upscaled.float())
            parts = [cmrl_loss(projected[row], targets[row], noisy_low[row], refined[row] > 0, valid[row],
                               config.cmrl, generators[id(item)], certain=None if item.certainty is None else certain[row])
                     for row, item in enumerate(items)]
            for name in ("intra", "inter", "self"):
                terms[name] = torch.stack([part[name] for part in parts])
            cmrl = torch.stack([part["total"] for part in parts])
            terms["cmrl"] = cmrl
            losses = losses + config.cmrl.weight * cmrl
        terms["loss"] = losses
        for name, values in terms.items():
            counts[name] += float(values.detach().sum())
        counts["pairs"] += len(items)
        return losses, refined

    @staticmethod
    def _certainty(items: List[Prepared], counts: Dict[str, float]) -> Optional[torch.Tensor]:
        """float ``B x m x m`` certainty of the items' targets (1 for items without a map), or None when no item
        has a map; counts the mean certainty and the share of certain pixels of the valid ones."""
        if all(item.certainty is None for item in items):
            return None
        rows = []
        for item in items:
            if item.certainty is None:
                rows.append(torch.ones_like(item.target_low, dtype=torch.float32))
                continue
            rows.append(item.certainty)
            inside = item.certainty[item.valid]
            counts["ua_pairs"] += 1
            counts["certainty"] += float(inside.mean())
            counts["certain_fraction"] += float((inside > DEFAULT_THETA).float().mean())
        return torch.stack(rows)
