"""Every setting of refiner training, with Phoenix's published values as defaults.

Numbers and the decisions taken where the papers are silent are listed in ``shared/PHOENIX_FACTS.md``;
each field names its source. ``to_dict`` / ``from_dict`` round-trip through JSON (checkpoints, logs,
resume checks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

NOISE_KINDS = ("adversarial", "sam", "morphological")
GUIDANCE_KINDS = ("expansion", "contraction", "inversion")
CRITERIA = ("dice", "mse", "l1", "bce")
MASK_ENCODINGS = ("binary", "distance")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclasses.dataclass
class AMPConfig:
    """Adversarial Mask Perturbation (Phoenix Sec. 3.3, Algorithm 1, B.2, C.1.4)."""

    num_tokens: int = 50  # P perturbation embeddings (Figure 5c)
    init_std: float = 0.1  # E_p = 0 + N(0, 0.1) (B.2)
    step_size: float = 0.01  # α0 (Figure 5b)
    inner_steps: int = 10  # N
    max_decays: int = 3  # DECISION (the paper: "until maximum decay steps reached")
    tau_range: Tuple[float, float] = (0.3, 0.9)  # τ ~ U(0.3, 0.9) (Table 8c)
    band: float = 0.05  # ε: the target band is [τ, τ + ε]
    guidance: Tuple[str, ...] = GUIDANCE_KINDS  # drawn uniformly per noisy mask (Table 8d)
    criterion: str = "dice"  # D (Table 4b)

    def validate(self) -> None:
        low, high = self.tau_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"AMP tau range must satisfy 0 <= low <= high <= 1, got {self.tau_range}")
        if not self.guidance or any(kind not in GUIDANCE_KINDS for kind in self.guidance):
            raise ValueError(f"AMP guidance must be a non-empty subset of {GUIDANCE_KINDS}, got {self.guidance}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"AMP criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.num_tokens < 1 or self.inner_steps < 1 or self.max_decays < 0 or self.step_size <= 0:
            raise ValueError("AMP needs num_tokens >= 1, inner_steps >= 1, max_decays >= 0 and step_size > 0")


@dataclasses.dataclass
class CMRLConfig:
    """Contrastive Mask Refinement Learning (Phoenix Sec. 3.4, Algorithm 2, B.6, C.1.5)."""

    enabled: bool = True
    weight: float = 1e-3  # λ_CMRL (Figure 5e)
    intra: float = 0.4  # λ_intra, λ_inter, λ_self (Figure 5d)
    inter: float = 0.4
    self_improvement: float = 0.2
    temperature: float = 0.1  # τ: not given; DECISION
    samples_per_region: int = 256  # B.6
    self_samples: int = 512  # Algorithm 2's success / failure sets
    projector_layers: int = 3  # Table 8g

    def validate(self) -> None:
        if self.temperature <= 0 or self.samples_per_region < 1 or self.self_samples < 1 or self.projector_layers < 1:
            raise ValueError("CMRL needs temperature > 0 and samples_per_region, self_samples, projector_layers >= 1")


@dataclasses.dataclass
class SamNoiseConfig:
    """SUM's pseudo-labels as noisy inputs (``--noise sam``; SUM D.2, B.1)."""

    min_iou_with_target: float = 0.7  # pairs below are dropped (D.2)
    min_predicted_iou: float = 0.88  # SAM's quality filters (B.1)
    min_stability: float = 0.95
    tries: int = 3  # points drawn per target before the sample is counted as rejected; DECISION


@dataclasses.dataclass
class SelfSupervisedConfig:
    """Pseudo-targets from SAM's automatic mask generator (Phoenix A.1, B.4; filters from SUM B.1)."""

    points_per_side: int = 4
    min_predicted_iou: float = 0.88
    min_stability: float = 0.95
    max_area_fraction: float = 0.95


@dataclasses.dataclass
class TrainingConfig:
    """Refiner training (Phoenix B.2 unless said otherwise).

    Attributes:
        noise: ``adversarial`` (AMP), ``sam`` (SUM's one-point SAM pseudo-labels, fed as logits) or
            ``morphological`` (erosion / dilation / boundary jitter, the SegRefiner-style baseline).
        p_morph: probability of replacing a noisy mask by a morphological one (Table 8e: 0).
        iterations, batch_size: optimiser steps and the global batch (samples per step, over all ranks).
        lr, betas, weight_decay, warmup, grad_clip: AdamW, linear warm-up then cosine decay, clipping.
        focal_weight, dice_weight, iou_weight: L_SAM = 20 focal + 1 dice + 1 IoU-head MSE.
        prompt_dropout: probability of feeding the noisy mask alone, without points and box.
        hflip, colour_jitter: augmentation (the jitter's brightness / contrast / saturation range; 0: off).
        cascade_steps: K more steps per sample on its own detached refined mask (cascade curriculum).
        train_prompt_encoder: train the prompt encoder with the mask decoder (DECISION: on).
        mask_encoding, mask_strength, mask_gamma: how the noisy mask enters as dense prompt (binary +-ω,
            or SAMRefiner's ``distance`` Gaussian); stored in the checkpoint, inference reads it.
        use_point, use_box, add_negative: the visual prompts mined from the noisy mask.
        min_area: targets with fewer pixels are not trained on (counted).
        precision: ``fp32``, or ``fp16`` / ``bf16`` autocast for the decoder (fp16 with loss scaling).
        seed: every random draw derives from it, the iteration and the sample's place in the batch.
        batch_invariant: decode each sample alone (results independent of batch composition; the CPU
            default, as :class:`~refine_hooks.sam.SamEngine`).
        target_uncertainty: a :func:`~refine_hooks.refiners.build_refiner` dict (``model_type`` / ``checkpoint``
            default to the trained SAM's): pseudo-targets (``--unlabeled``) get SUM's certainty map from it
            (Sec. 3.2.1-3.2.3): uncertainty-aware focal and Dice losses, UA prompt sampling for ``sam`` noise,
            uncertain pixels left out of CMRL's regions and the IoU target. None: every target is certain.
        task_prompt: SUM's task prompt (Sec. 3.2.4): a learned embedding per task added to the image
            embedding; None: on when the sources are of more than one task.
    """

    noise: str = "adversarial"
    p_morph: float = 0.0
    iterations: int = 10_000
    batch_size: int = 16
    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    warmup: int = 500
    grad_clip: float = 0.1
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    prompt_dropout: float = 0.3
    hflip: float = 0.5
    colour_jitter: float = 0.2  # DECISION: the paper names colour jitter without its strength
    cascade_steps: int = 2  # DECISION (PHOENIX_FACTS "cascade as curriculum")
    train_prompt_encoder: bool = True
    mask_encoding: str = "binary"
    mask_strength: float = 30.0
    mask_gamma: float = 4.0
    use_point: bool = True
    use_box: bool = True
    add_negative: bool = True
    min_area: int = 16
    precision: str = "fp32"
    seed: int = 0
    batch_invariant: Optional[bool] = None
    target_uncertainty: Optional[Dict[str, Any]] = None  # SUM Sec. 3.2.1-3.2.3
    task_prompt: Optional[bool] = None  # SUM Sec. 3.2.4; None: auto
    amp: AMPConfig = dataclasses.field(default_factory=AMPConfig)
    cmrl: CMRLConfig = dataclasses.field(default_factory=CMRLConfig)
    sam_noise: SamNoiseConfig = dataclasses.field(default_factory=SamNoiseConfig)
    self_supervised: SelfSupervisedConfig = dataclasses.field(default_factory=SelfSupervisedConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {self.noise!r}")
        if self.mask_encoding not in MASK_ENCODINGS:
            raise ValueError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {self.mask_encoding!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("p_morph", "prompt_dropout", "hflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError(f"iterations and batch_size must be >= 1, got {self.iterations}, {self.batch_size}")
        if self.warmup < 0 or self.cascade_steps < 0 or self.min_area < 1:
            raise ValueError("warmup and cascade_steps must be >= 0, min_area >= 1")
        if self.lr <= 0 or self.grad_clip <= 0 or self.mask_strength <= 0 or self.colour_jitter < 0:
            raise ValueError("lr, grad_clip and mask_strength must be > 0, colour_jitter >= 0")
        self.amp.validate()
        self.cmrl.validate()
        if self.target_uncertainty is not None:
            from ...refiners.registry import check_refiner_config

            check_refiner_config(self.target_uncertainty, "target_uncertainty (--target-uncertainty)")

    @property
    def kind(self) -> str:
        """What the checkpoint is: ``sum`` for SUM-style training (``--noise sam``), else ``phoenix``."""
        return "sum" if self.noise == "sam" else "phoenix"

    def mask_prompt(self) -> Dict[str, Any]:
        """The mask-prompt encoding as a refiner checkpoint stores it."""
        return {"encoding": self.mask_encoding, "strength": self.mask_strength, "gamma": self.mask_gamma}

    def prompt_settings(self) -> Dict[str, Any]:
        return {"use_point": self.use_point, "use_box": self.use_box, "add_negative": self.add_negative}

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainingConfig":
        data = dict(data)
        nested = {"amp": AMPConfig, "cmrl": CMRLConfig, "sam_noise": SamNoiseConfig,
                  "self_supervised": SelfSupervisedConfig}
        for name, kind in nested.items():
            if name in data:
                data[name] = _from_fields(kind, data[name])
        return _from_fields(cls, data)


def _from_fields(kind, data: Dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {kind.__name__} settings: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        default = fields[name].default
        values[name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    return kind(**values)


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
