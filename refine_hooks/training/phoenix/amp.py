"""Adversarial Mask Perturbation (Phoenix Sec. 3.3, Algorithm 1, B.2): realistic noisy masks from a frozen SAM.

P perturbation tokens E_p (zeros + N(0, 0.1)) are appended to the sparse prompt embeddings E_v of the
target's points and box; FGSM steps on E_p, ``E_p <- E_p + α sign(∇ L_adv)`` with
``L_adv = -D(f_dec(E_img, [E_p; E_v]), M_g)``, pull the frozen decoder's mask toward a guidance mask M_g
(expansion: all ones, contraction: all zeros, inversion: 1 - target) until its IoU with the target falls
into the band [τ, τ + ε]. Only E_p changes: the decoder is a frozen copy of the pre-trained one.

DECISIONS (``shared/PHOENIX_FACTS.md``): the frozen decoder is the original SAM's; its dense input is SAM's
no-mask embedding; the noisy mask is mask token 0 (SAM's single-output mask, the one SAM returns for
point + box prompts); Algorithm 1 runs as printed with at most 3 step-size decays, and when it ends
outside the band the mask whose IoU is closest to the band is returned. Two shortcuts that change no
result: the N-th update of a pass, whose outcome Algorithm 1 never evaluates, is skipped; a mask already
below the band before any update cannot be restored to anything, so it ends at once (every decay would
re-evaluate the same embeddings).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence

import torch

from .config import AMPConfig

# How a noisy mask's search ended (counted in the training log).
HIT = "hit"  # inside [τ, τ + ε]
OVERSHOT = "overshot"  # below τ after every decay (or from the start)
MISSED = "missed"  # still above τ + ε after N steps

UPDATE = "update"
RESTORE = "restore"
DONE = "done"


class BandSearch:
    """Algorithm 1's control flow for one noisy mask, separated from the decoder so it can be followed
    step by step: feed the IoU of each evaluated mask to :meth:`observe`, do what it answers.

    ``observe`` answers :data:`UPDATE` (save E_p, take an FGSM step with :attr:`alpha`, evaluate again),
    :data:`RESTORE` (restore the saved E_p, evaluate again; the step size was divided by 10) or
    :data:`DONE` (:attr:`outcome` and :attr:`result` say how, and which evaluation to return).

    Args:
        tau: τ, the lower end of the target band.
        config: ε, α0, N and the number of decays.
    """

    def __init__(self, tau: float, config: AMPConfig):
        self.tau, self.high = float(tau), float(tau) + config.band
        self.alpha = config.step_size
        self.inner_steps, self.max_decays = config.inner_steps, config.max_decays
        self.decays = 0
        self.evaluations_in_pass = 0
        self.updates = 0
        self.evaluations = 0
        self.outcome: Optional[str] = None
        self.result: Optional[int] = None  # index (0-based, in evaluation order) of the mask to return
        self._closest = (float("inf"), -1)

    def distance_to_band(self, iou: float) -> float:
        if iou < self.tau:
            return self.tau - iou
        return max(0.0, iou - self.high)

    def observe(self, iou: float) -> str:
        """The IoU of the mask just evaluated (evaluation number :attr:`evaluations`) -> the next action."""
        index = self.evaluations
        self.evaluations += 1
        distance = self.distance_to_band(iou)
        if distance < self._closest[0]:
            self._closest = (distance, index)
        if iou < self.high:  # Algorithm 1, line 6: break out of the inner loop
            if iou >= self.tau:  # line 14: target IoU achieved
                return self._finish(HIT, index)
            if self.decays >= self.max_decays or self.updates == 0:  # line 19, or nothing to restore
                return self._finish(OVERSHOT, self._closest[1])
            self.decays += 1  # lines 17-18
            self.alpha /= 10.0
            self.evaluations_in_pass = 0
            return RESTORE
        self.evaluations_in_pass += 1
        if self.evaluations_in_pass >= self.inner_steps:  # the loop's N-th evaluation, still above the band
            return self._finish(MISSED, self._closest[1])
        self.updates += 1
        return UPDATE

    @property
    def started_below(self) -> bool:
        """The first mask (no update yet) was already below τ: the only way to overshoot without an update."""
        return self.outcome == OVERSHOT and self.updates == 0

    @property
    def closest(self) -> int:
        """Index of the evaluation closest to the band so far (the first among ties)."""
        return self._closest[1]

    def _finish(self, outcome: str, result: int) -> str:
        self.outcome, self.result = outcome, result
        return DONE


def guidance_masks(kinds: Sequence[str], targets: torch.Tensor) -> torch.Tensor:
    """float ``B x m x m`` guidance M_g for bool ``B x m x m`` targets: expansion 1, contraction 0,
    inversion 1 - target (Phoenix Sec. 3.3, "Controllable Noise Generation")."""
    out = torch.empty(targets.shape, dtype=torch.float32, device=targets.device)
    for i, kind in enumerate(kinds):
        if kind == "expansion":
            out[i] = 1.0
        elif kind == "contraction":
            out[i] = 0.0
        elif kind == "inversion":
            out[i] = 1.0 - targets[i].float()
        else:
            raise ValueError(f"unknown guidance {kind!r}")
    return out


def adversarial_criterion(name: str, probabilities: torch.Tensor, guidance: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """D(pred, M_g) per sample (float ``B``) on float ``B x m x m`` probabilities, over pixels with weight.

    ``dice`` is SAM's Dice loss ``1 - (2 Σ p g + 1) / (Σ p + Σ g + 1)``; its +1 smoothing is what gives the
    contraction guide (all zeros) a gradient at all.
    """
    p, g, w = probabilities.flatten(1), guidance.flatten(1), weights.flatten(1)
    if name == "dice":
        return 1.0 - (2.0 * (p * g * w).sum(1) + 1.0) / ((p * w).sum(1) + (g * w).sum(1) + 1.0)
    if name == "mse":
        return ((p - g) ** 2 * w).sum(1) / w.sum(1).clamp(min=1.0)
    if name == "l1":
        return ((p - g).abs() * w).sum(1) / w.sum(1).clamp(min=1.0)
    if name == "bce":
        bce = torch.nn.functional.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), g, reduction="none")
        return (bce * w).sum(1) / w.sum(1).clamp(min=1.0)
    raise ValueError(f"unknown adversarial criterion {name!r}")


def masked_iou(masks: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """IoU (float64 ``B``) of bool ``B x m x m`` masks and targets over pixels whose weight is > 0;
    1 where both are empty."""
    valid = weights > 0
    inter = (masks & targets & valid).flatten(1).sum(1).double()
    union = ((masks | targets) & valid).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclasses.dataclass
class PerturbationResult:
    """Noisy masks of B targets.

    Attributes:
        logits: float ``B x m x m`` decoder logits of the returned masks (noisy mask: logits > 0).
        iou: float64 ``B`` their IoU with the targets.
        updates: int ``B`` FGSM updates made.
        outcomes: one of :data:`HIT`, :data:`OVERSHOT`, :data:`MISSED` per mask.
        started_below: per mask, whether the frozen decoder's mask was below τ before any update (FGSM
            only lowers the IoU, so such a mask is returned as the decoder made it: an overshoot).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    updates: List[int]
    outcomes: List[str]
    started_below: List[bool]


# decode(E_p of some samples: k x P x C, their indices: list of k ints) -> logits k x m x m (autograd on E_p)
Decode = Callable[[torch.Tensor, List[int]], torch.Tensor]


def perturb(decode: Decode, initial: torch.Tensor, targets: torch.Tensor, guidance: torch.Tensor,
            weights: torch.Tensor, taus: Sequence[float], config: AMPConfig) -> PerturbationResult:
    """Run Algorithm 1 for B noisy masks at once: every evaluation decodes all masks still searching.

    Args:
        decode: the frozen decoder as a function of the perturbation tokens (see :data:`Decode`).
        initial: float ``B x P x C`` starting E_p.
        targets: bool ``B x m x m`` target masks M_t in the decoder's low-res frame.
        guidance: float ``B x m x m`` M_g.
        weights: float ``B x m x m``, > 0 on the pixels that count (the image, not SAM's padding).
        taus: τ per mask.
    """
    searches = [BandSearch(tau, config) for tau in taus]
    current = initial.detach().clone()
    saved = current.clone()
    # Per mask, the evaluation closest to the band so far (what an out-of-band ending returns) and its IoU.
    closest: List[Optional[torch.Tensor]] = [None] * len(searches)
    closest_iou = [float("nan")] * len(searches)
    result: List[Optional[torch.Tensor]] = [None] * len(searches)
    result_iou = [float("nan")] * len(searches)
    active = list(range(len(searches)))
    while active:
        perturbation = current[active].clone().requires_grad_(True)
        with torch.enable_grad():
            logits = decode(perturbation, active)
            masks = logits.detach() > 0
            ious = masked_iou(masks, targets[active], weights[active])
            actions = []
            for row, i in enumerate(active):
                index, iou = searches[i].evaluations, float(ious[row])
                action = searches[i].observe(iou)
                if searches[i].closest == index:
                    closest[i], closest_iou[i] = logits[row].detach(), iou
                if action == DONE:
                    own = searches[i].result == index
                    result[i] = logits[row].detach() if own else closest[i]
                    result_iou[i] = iou if own else closest_iou[i]
                actions.append(action)
            stepping = [row for row, action in enumerate(actions) if action == UPDATE]
            if stepping:
                adversarial = -adversarial_criterion(config.criterion, torch.sigmoid(logits[stepping].float()),
                                                     guidance[active][stepping], weights[active][stepping])
                (gradient,) = torch.autograd.grad(adversarial.sum(), perturbation)
        still = []
        for row, (i, action) in enumerate(zip(active, actions)):
            if action == UPDATE:
                saved[i] = current[i]
                current[i] = current[i] + searches[i].alpha * torch.sign(gradient[row])
                still.append(i)
            elif action == RESTORE:
                current[i] = saved[i]
                still.append(i)
        active = still
    return PerturbationResult(
        logits=torch.stack(result),
        iou=torch.tensor(result_iou, dtype=torch.float64),
        updates=[search.updates for search in searches],
        outcomes=[search.outcome for search in searches],
        started_below=[search.started_below for search in searches],
    )
