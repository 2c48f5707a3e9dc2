"""LoRA on the last layer of SAM's IoU head (SAMRefiner++'s "IoU adaption"), and adapter files.

SAMRefiner++ adapts which of SAM's three candidate masks the IoU head ranks first, by training a rank-4
LoRA on the head's last linear layer (``mask_decoder.iou_prediction_head.layers[-1]``, 256 -> 4) while
everything else stays frozen (training: :mod:`refine_hooks.training.iou_adaption`). An adapter file holds
only the LoRA matrices, their rank and scale, and a fingerprint of the layer they were trained on, so
loading it onto another SAM fails loudly instead of silently mis-ranking.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
from torch import nn

from .checkpoints import load_tensors

ADAPTER_FORMAT = "refine_hooks.iou_adaption/1"
LAYER_NAME = "mask_decoder.iou_prediction_head.layers[-1]"


class LoRALinear(nn.Module):
    """``base(x) + scaling * x A^T B^T``: a frozen linear layer plus a trainable low-rank update.

    ``A`` (``rank x in``) starts Kaiming-uniform and ``B`` (``out x rank``) at zero, so a fresh layer
    computes exactly what ``base`` computes; ``scaling = alpha / rank`` (loralib's convention).

    Args:
        base: the frozen ``nn.Linear`` (its parameters get ``requires_grad=False``).
        rank: rank of the update.
        alpha: scale numerator.
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 1.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``... x in`` -> ``... x out``."""
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling


def _iou_layers(model: nn.Module) -> nn.ModuleList:
    head = getattr(getattr(model, "mask_decoder", None), "iou_prediction_head", None)
    if head is None or not hasattr(head, "layers"):
        raise TypeError(f"{type(model).__name__} has no mask_decoder.iou_prediction_head.layers: not a SAM-family model")
    return head.layers


def iou_lora(model: nn.Module) -> Union[LoRALinear, None]:
    """The LoRA layer on the model's IoU head, or None."""
    layer = _iou_layers(model)[-1]
    return layer if isinstance(layer, LoRALinear) else None


def layer_fingerprint(layer: nn.Linear) -> str:
    """sha256 of the layer's weight and bias bytes (float32, CPU): which SAM an adapter belongs to."""
    digest = hashlib.sha256()
    for tensor in (layer.weight, layer.bias):
        if tensor is not None:
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def add_iou_lora(model: nn.Module, rank: int = 4, alpha: float = 1.0, seed: int = 0) -> LoRALinear:
    """Put a fresh :class:`LoRALinear` on the last layer of the model's IoU head (in place).

    The model's outputs are unchanged until the LoRA trains (``B = 0``). ``seed`` fixes ``A``'s init.
    """
    layers = _iou_layers(model)
    if isinstance(layers[-1], LoRALinear):
        raise ValueError("the IoU head already has a LoRA layer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers[-1] = LoRALinear(layers[-1], rank=rank, alpha=alpha)
    return layers[-1]


def lora_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The trainable parameters of the IoU-head LoRA (``lora_A``, ``lora_B``)."""
    layer = iou_lora(model)
    if layer is None:
        raise ValueError("the model has no IoU-head LoRA: call add_iou_lora first")
    return [layer.lora_A, layer.lora_B]


def save_iou_adapter(model: nn.Module, path: Union[str, Path], **metadata: Any) -> Path:
    """Write the IoU-head LoRA of ``model`` to ``path`` (atomically); ``metadata`` is stored alongside
    (model type, SAM checkpoint, training settings...)."""
    layer = iou_lora(model)
    if layer is None:
        raise ValueError("the model has no IoU-head LoRA to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": ADAPTER_FORMAT,
        "layer": LAYER_NAME,
        "rank": layer.rank,
        "alpha": layer.alpha,
        "base_fingerprint": layer_fingerprint(layer.base),
        "lora_A": layer.lora_A.detach().cpu().clone(),
        "lora_B": layer.lora_B.detach().cpu().clone(),
        "metadata": dict(metadata),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def read_iou_adapter(path: Union[str, Path]) -> Dict[str, Any]:
    """The contents of an adapter file, checked to be one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IoU adapter {path} does not exist")
    state = load_tensors(path, f"{path} is not a readable IoU adapter file (written by tools/train_iou_adaption.py)")
    if not isinstance(state, dict) or state.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not an IoU adapter written by tools/train_iou_adaption.py "
                         f"(format {ADAPTER_FORMAT}); a SAM checkpoint goes to --checkpoint")
    return state


def load_iou_adapter(model: nn.Module, path: Union[str, Path]) -> LoRALinear:
    """Put the LoRA of adapter file ``path`` on the model's IoU head (in place).

    Raises ValueError when the adapter was trained on a different SAM (the IoU head's last layer
    differs) or has other shapes.
    """
    state = read_iou_adapter(path)
    layers = _iou_layers(model)
    base = layers[-1].base if isinstance(layers[-1], LoRALinear) else layers[-1]
    if layer_fingerprint(base) != state["base_fingerprint"]:
        trained_on = state.get("metadata", {})
        raise ValueError(
            f"IoU adapter {path} was trained on another SAM (model_type={trained_on.get('model_type')!r}, "
            f"checkpoint={trained_on.get('checkpoint')!r}): its IoU head differs from this model's")
    layer = LoRALinear(base, rank=int(state["rank"]), alpha=float(state["alpha"]))
    if layer.lora_A.shape != state["lora_A"].shape or layer.lora_B.shape != state["lora_B"].shape:
        raise ValueError(f"IoU adapter {path}: LoRA shapes {tuple(state['lora_A'].shape)}, {tuple(state['lora_B'].shape)} "
                         f"do not fit the layer ({base.in_features} -> {base.out_features})")
    with torch.no_grad():
        layer.lora_A.copy_(state["lora_A"])
        layer.lora_B.copy_(state["lora_B"])
    layer.requires_grad_(False)
    layers[-1] = layer
    return layer
