"""SAM's prompt encoder + mask decoder called with gradients on prompt sets of different images.

Training needs three things SAM's ``MaskDecoder.forward`` does not give: every mask token's output
(multimask candidates and the single-output token AMP uses), the upscaled image embedding F that CMRL
works on (Phoenix B.1: ``32 x 256 x 256``, the output of ``output_upscaling``), and one call for prompt
sets that belong to different images. None of it needs a copy of SAM's decoder code:

- ``MaskDecoder.predict_masks`` returns all mask tokens;
- a forward hook on ``output_upscaling`` hands over F;
- ``predict_masks`` computes ``repeat_interleave(image_embeddings, n) + dense_prompt_embeddings``; passing
  a zero image embedding and ``image embedding + dense prompt`` as the dense input gives each prompt set
  its own image, bit for bit (adding zero is exact).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ...sam.engine import ImageEmbedding, SamEngine, dense_positional_encoding


@dataclasses.dataclass
class DecoderOutput:
    """Decoder outputs of B prompt sets.

    Attributes:
        logits: float ``B x T x m x m`` low-res mask logits of all T mask tokens (token 0: SAM's
            single-output mask; 1..3: the multimask candidates).
        iou: float ``B x T`` predicted IoUs.
        upscaled: float ``B x c x m x m``, the upscaled image embedding F (c = transformer dim / 8).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    upscaled: torch.Tensor

    @property
    def candidates(self) -> torch.Tensor:
        """``B x 3 x m x m``: the multimask candidates, as ``multimask_output=True`` returns them."""
        return self.logits[:, 1:]

    @property
    def candidate_iou(self) -> torch.Tensor:
        return self.iou[:, 1:]


@dataclasses.dataclass
class PromptSet:
    """The embedded prompts of one sample: float ``1 x T x C`` sparse and ``1 x C x h x w`` dense, with the
    index of its image embedding."""

    sparse: torch.Tensor
    dense: torch.Tensor
    image: int


def embed_prompts(prompt_encoder: nn.Module, engine: SamEngine, embedding: ImageEmbedding,
                  prompts: Dict[str, torch.Tensor], *, use_mask: bool = True) -> tuple:
    """Run ``prompt_encoder`` (with autograd when it trains) on one sample's prompts, scaling coordinates
    from original pixels to SAM's input frame exactly as :meth:`SamEngine.decode` does.

    Args:
        prompts: keyword arguments of :meth:`SamEngine.decode` for ONE prompt set (leading dim 1):
            ``point_coords`` / ``point_labels`` / ``boxes`` / ``mask_inputs``, each optional.
        use_mask: False feeds no dense prompt (SAM's no-mask embedding) even when ``mask_inputs`` is given.

    Returns:
        ``(sparse 1 x T x C, dense 1 x C x h x w)``.
    """
    device = engine.device
    points = None
    if prompts.get("point_coords") is not None:
        points = (engine.scale_coords(prompts["point_coords"], embedding).to(device), prompts["point_labels"].to(device))
    boxes = None
    if prompts.get("boxes") is not None:
        boxes = engine.scale_coords(prompts["boxes"].reshape(-1, 2, 2), embedding).reshape(-1, 4).to(device)
    masks = prompts.get("mask_inputs") if use_mask else None
    if masks is not None:
        masks = masks.to(device)
    if points is None and boxes is None and masks is None:
        # SAM's prompt encoder needs a batch size from some prompt: an empty sparse set, no-mask dense.
        sparse = torch.empty((1, 0, prompt_encoder.embed_dim), device=device)
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *prompt_encoder.image_embedding_size)
        return sparse, dense
    return prompt_encoder(points=points, boxes=boxes, masks=masks)


class PromptDecoder:
    """Decodes prompt sets of several images with one SAM mask decoder (see the module docstring).

    Args:
        prompt_encoder, mask_decoder: SAM modules (trainable or frozen; autograd follows the caller).
        batch_invariant: decode each prompt set alone, so a sample's result never depends on which other
            samples share its batch (CPU matrix kernels round differently per batch size); otherwise
            prompt sets with the same number of sparse tokens share a call.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, *, batch_invariant: bool):
        if not hasattr(mask_decoder, "predict_masks") or hasattr(mask_decoder, "hf_token"):
            raise TypeError("refiner training needs SAM's MaskDecoder (vit_b/l/h, tiny); HQ-SAM is not supported")
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.batch_invariant = batch_invariant

    @contextlib.contextmanager
    def _capture_upscaled(self) -> Iterator[List[torch.Tensor]]:
        captured: List[torch.Tensor] = []
        handle = self.mask_decoder.output_upscaling.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            yield captured
        finally:
            handle.remove()

    def __call__(self, images: torch.Tensor, prompt_sets: Sequence[PromptSet]) -> DecoderOutput:
        """Decode ``prompt_sets`` against float ``N x C x h x w`` image embeddings ``images``.

        Returns the outputs in the order of ``prompt_sets``.
        """
        if self.batch_invariant:
            groups = [[i] for i in range(len(prompt_sets))]
        else:
            by_tokens: Dict[int, List[int]] = {}
            for i, prompt_set in enumerate(prompt_sets):
                by_tokens.setdefault(prompt_set.sparse.shape[1], []).append(i)
            groups = list(by_tokens.values())
        image_pe = dense_positional_encoding(self.prompt_encoder).to(images.dtype)
        zero_image = torch.zeros_like(images[:1])
        results: List[Optional[tuple]] = [None] * len(prompt_sets)
        for group in groups:
            sparse = torch.cat([prompt_sets[i].sparse for i in group]).to(images.dtype)
            dense = torch.cat([images[prompt_sets[i].image : prompt_sets[i].image + 1] + prompt_sets[i].dense
                               for i in group])
            with self._capture_upscaled() as captured:
                logits, iou = self.mask_decoder.predict_masks(
                    image_embeddings=zero_image, image_pe=image_pe,
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
            for row, i in enumerate(group):
                results[i] = (logits[row], iou[row], captured[0][row])
        logits, iou, upscaled = (torch.stack(parts) for parts in zip(*results))
        return DecoderOutput(logits=logits, iou=iou, upscaled=upscaled)
