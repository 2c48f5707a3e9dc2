"""Refiner checkpoints: the trained prompt encoder and mask decoder of a SAM, and which SAM they belong to.

A trained refiner (Phoenix, SUM's mask-refinement module; ``tools/train_refiner.py``) keeps SAM's image
encoder frozen and trains only the prompt encoder (~6K parameters) and the mask decoder (~4M). Its
checkpoint holds just those, plus what inference must reproduce exactly (the mask-prompt encoding and
the prompt settings it was trained with), the training configuration, and the fingerprint of the SAM
whose frozen encoder it was trained on. Loading it onto another SAM stops with an error naming both
fingerprints: the decoder of ViT-B, -L and -H have the same shapes, so nothing else would notice.

A refiner trained on sources of several segmentation tasks also holds SUM's task prompt (Sec. 3.2.4): one
learned embedding per task, added to the image embedding (key ``task_prompt``, absent otherwise; older
checkpoints have none and load as before).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

REFINER_FORMAT = "refine_hooks.refiner_checkpoint/1"
TRAINED_MODULES = ("prompt_encoder", "mask_decoder")
# SUM's task ids (Sec. 3.2.4, Figure 2): 0 unlabeled data (pseudo-labels), 1 salient-object segmentation,
# 2 entity segmentation.
TASKS = ("pseudo", "salient_object", "entity")


def task_index(task: Union[str, int], tasks: Sequence[str] = TASKS, source: str = "task") -> int:
    """The id of ``task``: one of ``tasks`` by name, or its id (an int or a string of digits).

    Raises:
        ValueError: naming ``source`` and the choices.
    """
    text = str(task).strip()
    if text.isdigit() and int(text) < len(tasks):
        return int(text)
    if text in tasks:
        return list(tasks).index(text)
    choices = ", ".join(f"{i} {name}" for i, name in enumerate(tasks))
    raise ValueError(f"{source}: unknown task {task!r}; the tasks are {choices}")


class RefinerCheckpointError(ValueError):
    """A refiner checkpoint is missing, unreadable, not one, or belongs to another SAM; names the file."""


def sam_fingerprint(model: nn.Module) -> str:
    """sha256 of the image encoder's weights (names, shapes, dtypes, bytes as float32 on CPU).

    It identifies the frozen encoder a refiner or an embedding cache belongs to. Hashing every encoder
    tensor costs about a second per GB of weights; it runs once per model load.
    """
    encoder = getattr(model, "image_encoder", None)
    if encoder is None:
        raise TypeError(f"{type(model).__name__} has no image_encoder: not a SAM-family model")
    digest = hashlib.sha256()
    digest.update(f"{type(encoder).__name__}:{getattr(encoder, 'img_size', '')}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def trained_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """CPU copies of the prompt encoder's and mask decoder's parameters and buffers, keyed as in ``Sam``."""
    state: Dict[str, torch.Tensor] = {}
    for module_name in TRAINED_MODULES:
        module = getattr(model, module_name)
        for key, tensor in module.state_dict().items():
            state[f"{module_name}.{key}"] = tensor.detach().to("cpu").clone()
    return state


def save_refiner_checkpoint(
    path: Union[str, os.PathLike],
    *,
    weights: Mapping[str, torch.Tensor],
    fingerprint: str,
    kind: str,
    mask_prompt: Mapping[str, Any],
    prompts: Mapping[str, Any],
    training: Mapping[str, Any],
    sam: Mapping[str, Any],
    task_prompt: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a refiner checkpoint atomically (a crash never leaves a half-written file under ``path``).

    Args:
        weights: :func:`trained_state` of the trained modules.
        fingerprint: :func:`sam_fingerprint` of the SAM it was trained on.
        kind: ``phoenix`` or ``sum`` (which noise it was trained on; both run as the Phoenix refiner).
        mask_prompt: ``{"encoding": "binary"|"distance", "strength": float, "gamma": float}``.
        prompts: ``{"use_point": bool, "use_box": bool, "add_negative": bool}``.
        training: the training configuration (JSON-ready).
        sam: what the SAM was (``model_type``, ``checkpoint``), for messages.
        task_prompt: SUM's task prompt when the refiner was trained with one: ``{"embedding": float
            num_tasks x C, "tasks": names, "default": the name inference uses unless told}``.
    """
    unknown = [key for key in weights if key.split(".", 1)[0] not in TRAINED_MODULES]
    if unknown:
        raise ValueError(f"a refiner checkpoint holds only {TRAINED_MODULES} weights, got {unknown[:3]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": REFINER_FORMAT,
        "kind": kind,
        "sam_fingerprint": fingerprint,
        "sam": dict(sam),
        "mask_prompt": dict(mask_prompt),
        "prompts": dict(prompts),
        "training": dict(training),
        "weights": {key: tensor.detach().to("cpu") for key, tensor in weights.items()},
    }
    if task_prompt is not None:
        embedding = task_prompt["embedding"].detach().to("cpu", torch.float32)
        tasks = [str(name) for name in task_prompt["tasks"]]
        if embedding.dim() != 2 or embedding.shape[0] != len(tasks) or task_prompt["default"] not in tasks:
            raise ValueError(f"a task prompt needs one embedding row per task and a default among {tasks}")
        state["task_prompt"] = {"embedding": embedding, "tasks": tasks, "default": str(task_prompt["default"])}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_refiner_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The contents of a refiner checkpoint, checked to be one (see :func:`save_refiner_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        raise RefinerCheckpointError(f"refiner checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise RefinerCheckpointError(f"refiner checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, garbage, pickle of another kind: one message
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RefinerCheckpointError(f"{path} is not a readable refiner checkpoint (truncated or not a torch file?): "
                                     f"{first_line}") from None
    if not isinstance(state, dict) or state.get("format") != REFINER_FORMAT:
        raise RefinerCheckpointError(f"{path} is not a refiner checkpoint written by tools/train_refiner.py "
                                     f"(format {REFINER_FORMAT})")
    return state


def load_refiner_weights(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
                         *, fingerprint: Optional[str] = None, source: Optional[str] = None) -> Dict[str, Any]:
    """Put a refiner checkpoint's prompt encoder and mask decoder into ``model`` (in place).

    Args:
        checkpoint: a path, or what :func:`read_refiner_checkpoint` returned.
        fingerprint: :func:`sam_fingerprint` of ``model`` when the caller has it already.
        source: how messages name the checkpoint when ``checkpoint`` is its contents (its path).

    Returns:
        the checkpoint's contents.

    Raises:
        RefinerCheckpointError: the checkpoint belongs to another SAM (both fingerprints named) or its
            weights do not fit the model.
    """
    path = checkpoint if not isinstance(checkpoint, Mapping) else (source or "<refiner checkpoint>")
    state = read_refiner_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else dict(checkpoint)
    own = fingerprint or sam_fingerprint(model)
    if state["sam_fingerprint"] != own:
        trained_on = state.get("sam", {})
        raise RefinerCheckpointError(
            f"refiner checkpoint {path} was trained on another SAM (model_type={trained_on.get('model_type')!r}, "
            f"checkpoint={trained_on.get('checkpoint')!r}, fingerprint {state['sam_fingerprint'][:16]}...) "
            f"than this one (fingerprint {own[:16]}...); use the SAM it was trained on")
    for module_name in TRAINED_MODULES:
        prefix = module_name + "."
        part = {key[len(prefix):]: value for key, value in state["weights"].items() if key.startswith(prefix)}
        module = getattr(model, module_name)
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as error:
            raise RefinerCheckpointError(f"refiner checkpoint {path}: its {module_name} does not fit this model: "
                                         f"{str(error)[:400]}") from None
    return state
