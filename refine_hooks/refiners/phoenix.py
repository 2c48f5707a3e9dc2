"""Phoenix: a SAM whose prompt encoder and mask decoder were trained to refine coarse masks.

"Learning from Adversity: Semantic-Aware Mask Refinement through Adversarial Perturbation" (Phoenix,
``shared/papers/phoenix.txt``). Training (Sec. 3.3-3.4, Algorithms 1-2) is in
:mod:`refine_hooks.training.phoenix`; this is inference (Sec. 3.2, B.1, B.3): the coarse mask goes in
as SAM's dense mask prompt, with point and box prompts mined from it "following the prompt sampling
strategy" of SAMRefiner; SAM's three candidates are ranked by the predicted IoU; the output is fed back
as the next input for 5 iterations (cascade self-refinement, Figure 5a).

So it is SAMRefiner's cascade with three things fixed by the refiner checkpoint instead of chosen by
the user: the trained decoder weights, the mask-prompt encoding (``binary`` +-ω by default, or
SAMRefiner's ``distance`` Gaussian) and the prompt switches; the box is always the tight box (no
elastic box: the model was trained on tight boxes). SUM-style checkpoints (trained with ``--noise sam``)
run through the same class. Everything else (pass-through rules, batching, memory bounds, devices,
convergence stop, result records) is SAMRefiner's.

A checkpoint trained on sources of several segmentation tasks carries SUM's task prompt (``shared/papers/
sum.txt`` Sec. 3.2.4): one learned embedding per task (0 pseudo, 1 salient object, 2 entity), added
element-wise to the image embedding. The ``task`` option picks it (default: the checkpoint's default task,
the human-labelled task it saw most). It is added right after encoding, so it reaches every cascade
iteration, as in training (the trainer adds it to every decoder call); SUM adds it in the first
interactive round only (its "Continuous TP" ablation, Table 2, is the every-round variant), but SUM's later
rounds get new click prompts, while a cascade iteration gets nothing new that says which task it is.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..files import file_sha256
from ..sam import SamEngine, build_sam_model
from ..sam.engine import ImageEmbedding
from ..sam.refiner_weights import load_refiner_weights, read_refiner_checkpoint, sam_fingerprint, task_index
from .samrefiner import SAMRefiner

DEFAULT_TASK = "default"  # the checkpoint's default task (none when it has no task prompt)
NO_TASK = "none"  # no task embedding, even when the checkpoint has some


def resolve_task(prompt: Optional[Mapping[str, Any]], task: Union[str, int], where: str) -> Optional[int]:
    """The task id the ``task`` option picks from a checkpoint's ``task_prompt`` (None: no task embedding).

    Raises:
        ValueError: an unknown task, or a task asked of a checkpoint without a task prompt; names ``where``.
    """
    if str(task) == NO_TASK or (str(task) == DEFAULT_TASK and prompt is None):
        return None
    if prompt is None:
        raise ValueError(f"task {task!r}: {where} was trained without a task prompt (sources of one task only); "
                         f"drop the task option or give {NO_TASK!r}")
    name = prompt["default"] if str(task) == DEFAULT_TASK else task
    return task_index(name, prompt["tasks"], source=f"task of {where}")


class Phoenix(SAMRefiner):
    """Refine coarse masks with a trained refiner checkpoint (see the module docstring).

    Args:
        engine: a :class:`SamEngine` whose model already holds the checkpoint's weights
            (:func:`build_phoenix` does that).
        checkpoint_state: what :func:`refine_hooks.sam.refiner_weights.read_refiner_checkpoint` returned.
        checkpoint_id: names the checkpoint in :attr:`config` (a path and its sha256).
        iterations: cascade length (Phoenix: 5).
        multimask_output: decode 3 candidates and keep the highest predicted IoU (Phoenix B.3).
        task: SUM's task prompt (module docstring): a task of the checkpoint by name (``pseudo``,
            ``salient_object``, ``entity``) or id, ``default`` (the checkpoint's default) or ``none``.
        min_area, max_chunk_pixels, encoder_batch_size, timer: as :class:`SAMRefiner`.
    """

    def __init__(
        self,
        engine: SamEngine,
        checkpoint_state: Mapping[str, Any],
        *,
        checkpoint_id: Optional[Dict[str, Any]] = None,
        iterations: int = 5,
        multimask_output: bool = True,
        task: Union[str, int] = DEFAULT_TASK,
        min_area: int = 1,
        max_chunk_pixels: int = 1 << 26,
        encoder_batch_size: int = 1,
        timer=None,
    ):
        mask_prompt = checkpoint_state["mask_prompt"]
        prompts = checkpoint_state["prompts"]
        super().__init__(
            engine,
            iterations=iterations,
            use_point=bool(prompts["use_point"]),
            use_box=bool(prompts["use_box"]),
            use_mask=True,
            add_negative=bool(prompts["add_negative"]),
            margin=0.0,
            semantic_margin=0.0,
            gamma=float(mask_prompt.get("gamma", 4.0)),
            strength=float(mask_prompt["strength"]),
            gaussian=str(mask_prompt["encoding"]),
            multimask_output=multimask_output,
            min_area=min_area,
            max_chunk_pixels=max_chunk_pixels,
            encoder_batch_size=encoder_batch_size,
            timer=timer,
        )
        self.kind = str(checkpoint_state.get("kind", "phoenix"))
        self.checkpoint_id = dict(checkpoint_id or {})
        prompt = checkpoint_state.get("task_prompt")
        index = resolve_task(prompt, task, self.checkpoint_id.get("path", "the refiner checkpoint"))
        self.task = None if index is None else str(prompt["tasks"][index])
        self.task_vector = None if index is None else prompt["embedding"][index].to(engine.device, torch.float32)

    def encode(self, images: Sequence[np.ndarray]) -> List[ImageEmbedding]:
        """SAM's image embeddings plus the task embedding, when there is one (SUM Sec. 3.2.4; every cascade
        iteration decodes from them)."""
        embeddings = super().encode(images)
        if self.task_vector is not None:
            for embedding in embeddings:
                embedding.features = embedding.features + self.task_vector.reshape(1, -1, 1, 1)
        return embeddings

    def to(self, device) -> "Phoenix":
        super().to(device)
        if self.task_vector is not None:
            self.task_vector = self.task_vector.to(self.engine.device)
        return self

    @classmethod
    def hyper_parameters(cls) -> Dict[str, object]:
        """``{name: default}`` of the options a user may set (the rest comes from the checkpoint)."""
        return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind == p.KEYWORD_ONLY and name not in ("timer", "checkpoint_id")}

    @property
    def config(self) -> Dict[str, object]:
        config = super().config
        config.update({"type": "Phoenix", "kind": self.kind, "refiner_checkpoint": self.checkpoint_id})
        if self.task is not None:
            config["task"] = self.task
        return config


def build_phoenix(
    *,
    refiner_checkpoint=None,
    model_type: str = "vit_h",
    checkpoint=None,
    device: str = "cpu",
    precision: str = "fp32",
    decoder_chunk_size: int = 64,
    batch_invariant=None,
    download: bool = True,
    iou_adapter=None,
    **hyper_parameters: Any,
) -> Phoenix:
    """A :class:`Phoenix` refiner: the SAM of ``model_type`` / ``checkpoint`` with the trained prompt encoder
    and mask decoder of ``refiner_checkpoint`` (a file from ``tools/train_refiner.py``).

    The refiner checkpoint is read before SAM is built, so a wrong file fails at once; it must have been
    trained on this SAM (fingerprints compared). ``iou_adapter`` is refused: an IoU adapter belongs to
    SAM's own decoder, which the checkpoint replaces.
    """
    if not refiner_checkpoint:
        raise ValueError("the Phoenix refiner needs refiner_checkpoint=PATH (a checkpoint from tools/train_refiner.py)")
    if iou_adapter:
        raise ValueError("iou_adapter belongs to SAM's own decoder; a Phoenix checkpoint replaces that decoder "
                         "(its IoU head is trained with it): drop iou_adapter")
    allowed = set(Phoenix.hyper_parameters())
    unknown = sorted(set(hyper_parameters) - allowed)
    if unknown:
        raise ValueError(f"Phoenix takes its prompts and mask encoding from its checkpoint; {', '.join(unknown)} "
                         f"cannot be set (options: {', '.join(sorted(allowed))})")
    path = os.path.abspath(os.fspath(refiner_checkpoint))
    state = read_refiner_checkpoint(path)
    model = build_sam_model(model_type, checkpoint, download=download)
    if hasattr(model.mask_decoder, "hf_token"):
        raise ValueError("Phoenix refiners are trained on SAM (vit_b/l/h, tiny), not on HQ-SAM")
    load_refiner_weights(model, state, fingerprint=sam_fingerprint(model), source=path)
    engine = SamEngine(model, device=device, precision=precision, decoder_chunk_size=decoder_chunk_size,
                       batch_invariant=batch_invariant)
    checkpoint_id = {"path": path, "sha256": file_sha256(path), "kind": state.get("kind")}
    return Phoenix(engine, state, checkpoint_id=checkpoint_id, **hyper_parameters)
