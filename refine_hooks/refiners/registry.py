"""Build a refiner from a config dict, as configs of mmdet, detectron2 and our tools describe it."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Union

import torch

from ..sam import SamEngine, build_sam_model
from ..sam.iou_adaption import load_iou_adapter
from .base import Refiner
from .phoenix import Phoenix, build_phoenix
from .samrefiner import SAMRefiner


def build_samrefiner(
    *,
    model_type: str = "vit_h",
    checkpoint=None,
    device: str = "cpu",
    precision: str = "fp32",
    decoder_chunk_size: int = 64,
    batch_invariant=None,
    download: bool = True,
    iou_adapter=None,
    **hyper_parameters: Any,
) -> SAMRefiner:
    """A :class:`SAMRefiner` on a SAM built by :func:`refine_hooks.sam.build_sam_model`.

    ``iou_adapter``: an adapter file of SAMRefiner++'s IoU adaption (``tools/train_iou_adaption.py``) put on
    the IoU head that picks among the candidate masks; None: SAM's own IoU head.
    """
    model = build_sam_model(model_type, checkpoint, download=download)
    if iou_adapter:
        load_iou_adapter(model, iou_adapter)
    engine = SamEngine(model, device=device, precision=precision, decoder_chunk_size=decoder_chunk_size, batch_invariant=batch_invariant)
    return SAMRefiner(engine, **hyper_parameters)


REFINER_BUILDERS: Dict[str, Callable[..., Refiner]] = {"SAMRefiner": build_samrefiner, "Phoenix": build_phoenix}
# The class each builder's ``**hyper_parameters`` go to (their names are its ``hyper_parameters()``).
_REFINER_CLASSES = {"SAMRefiner": SAMRefiner, "Phoenix": Phoenix}


def refiner_options(kind: str) -> Dict[str, Any]:
    """``{name: default}`` of every key a :func:`build_refiner` dict of type ``kind`` may hold (besides ``type``)."""
    if kind not in REFINER_BUILDERS:
        raise KeyError(f"unknown refiner type {kind!r}; available: {', '.join(REFINER_BUILDERS)}")
    options = {name: p.default for name, p in inspect.signature(REFINER_BUILDERS[kind]).parameters.items()
               if p.kind != p.VAR_KEYWORD}
    if kind in _REFINER_CLASSES:
        options.update(_REFINER_CLASSES[kind].hyper_parameters())
    return options


def check_refiner_config(config: Any, name: str = "refiner config") -> None:
    """Raise ``ValueError`` naming the problem unless ``config`` is a :func:`build_refiner` dict of a known type
    whose keys the refiner takes; nothing is built (no model is loaded)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{name} must be a JSON object like {{\"type\": \"SAMRefiner\"}}, got {type(config).__name__}")
    kind = config.get("type", "SAMRefiner")
    if kind not in REFINER_BUILDERS:
        raise ValueError(f"{name}: unknown refiner type {kind!r}; available: {', '.join(REFINER_BUILDERS)}")
    unknown = sorted(set(config) - set(refiner_options(kind)) - {"type"})
    if unknown:
        raise ValueError(f"{name}: {kind} takes no {', '.join(map(repr, unknown))} (options: "
                         f"{', '.join(sorted(refiner_options(kind)))})")


def build_refiner(config: Mapping[str, Any]) -> Refiner:
    """``build_refiner(dict(type='SAMRefiner', model_type='vit_h', checkpoint=None, device='cuda', ...))``, or
    ``dict(type='Phoenix', model_type='vit_h', checkpoint=SAM_WEIGHTS, refiner_checkpoint=PATH, ...)``."""
    config = dict(config)
    kind = config.pop("type", "SAMRefiner")
    if kind not in REFINER_BUILDERS:
        raise KeyError(f"unknown refiner type {kind!r}; available: {', '.join(REFINER_BUILDERS)}")
    return REFINER_BUILDERS[kind](**config)


RefinerSpec = Union[Mapping[str, Any], Refiner]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (cpu for a model without either)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def build_on_device(spec: RefinerSpec, device: torch.device, owner: str, log: Callable[[str], None] = print) -> Refiner:
    """A refiner from a config dict (:func:`build_refiner`) or an instance, moved to ``device``.

    For the framework adapters: the refiner runs where the detector runs, so a ``device`` in the config
    is replaced, and ``log`` says so. ``owner`` names the caller in messages.
    """
    if isinstance(spec, Refiner):
        refiner = spec
    elif isinstance(spec, Mapping):
        config = dict(spec)
        asked = config.get("device")
        if asked is not None and torch.device(asked) != device:
            log(f"{owner}: the refiner config asks for device {asked!r}; it runs on the detector's device {device} instead")
        config["device"] = str(device)
        refiner = build_refiner(config)
    else:
        raise TypeError(f"{owner}: refiner must be a config dict or a Refiner, got {type(spec).__name__}")
    if hasattr(refiner, "to"):
        refiner.to(device)
    return refiner
