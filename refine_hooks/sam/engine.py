"""Run a SAM-family model: preprocess and encode each image once, decode prompt batches in chunks.

Coordinates follow SAM's predictor: prompts arrive in original-image pixels and are scaled to the
resized-image frame (longest side = encoder input size) exactly like ``ResizeLongestSide`` does.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..resize import AxisMap, from_low_res, output_window, positive_window, to_mask_input

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class ImageEmbedding:
    """The encoder output for one image.

    Attributes:
        features: float32 ``1 x C x h x w`` on the model's device (h = w = encoder size / patch size).
        original_size: ``(H, W)`` of the image.
        input_size: ``(h', w')`` of the image resized so that its longest side is the encoder size.
        interm_features: HQ-SAM's early-layer features (``1 x h x w x C'``), None for SAM.
        cache: what is derived from the image once and reused by every mask group and iteration
            (frame maps, the elastic box's similarity norms).
    """

    features: torch.Tensor
    original_size: Tuple[int, int]
    input_size: Tuple[int, int]
    interm_features: Optional[torch.Tensor] = None
    cache: Dict[str, object] = dataclasses.field(default_factory=dict, repr=False)  # per-image derived data


def resized_shape(height: int, width: int, long_side: int) -> Tuple[int, int]:
    """``(h', w')`` with the longest side ``long_side``, rounded like ``ResizeLongestSide``."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SamEngine:
    """Encoder and decoder calls of a SAM-family model, with bounded memory.

    Args:
        model: a ``segment_anything`` ``Sam`` (or HQ-SAM) in eval mode.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``...).
        precision: ``fp32``, or ``bf16``/``fp16`` autocast for the image encoder and for the mask decoder's
            transformer and upscaling (thresholds and IoU predictions stay float32, see
            :meth:`_decoder_autocast`). ``fp32`` is bit-reproducible (README "Reproducibility").
        decoder_chunk_size: prompt sets decoded per decoder call; bounds memory for images with many masks.
        batch_invariant: decode one prompt set per decoder call so that a mask's result never depends
            on which other masks share its batch. CPU GEMM kernels round differently for different
            batch sizes (and the prompt encoder's mask convolution too), and the cascade can turn such
            1e-7 differences into different pixels. Default: on for CPU (little cost there: the decoder's
            work is per mask anyway), off for CUDA (batching is what makes the GPU fast).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        decoder_chunk_size: int = 64,
        batch_invariant: Optional[bool] = None,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if decoder_chunk_size < 1:
            raise ValueError(f"decoder_chunk_size must be >= 1, got {decoder_chunk_size}")
        self.model = model.eval()
        self.precision = precision
        self.decoder_chunk_size = decoder_chunk_size
        self.is_hq = hasattr(model.mask_decoder, "hf_token")
        self.batch_invariant = batch_invariant
        self.to(device)

    def to(self, device) -> "SamEngine":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @property
    def prompts_per_call(self) -> int:
        """Prompt sets per decoder call: 1 when batch invariant, else ``decoder_chunk_size``."""
        invariant = self.device.type == "cpu" if self.batch_invariant is None else self.batch_invariant
        return 1 if invariant else self.decoder_chunk_size

    @property
    def image_size(self) -> int:
        """Side of the square encoder input (1024 for the official models)."""
        return int(self.model.image_encoder.img_size)

    @property
    def embedding_size(self) -> Tuple[int, int]:
        return tuple(self.model.prompt_encoder.image_embedding_size)

    @property
    def mask_input_size(self) -> Tuple[int, int]:
        """Side of the dense mask prompt (256x256 for the official models)."""
        return tuple(self.model.prompt_encoder.mask_input_size)

    # ------------------------------------------------------------------ encoder
    def preprocess(self, image: np.ndarray) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """uint8 ``H x W x 3`` RGB -> float32 ``3 x S x S`` normalised and padded on the device, and ``(h', w')``.

        Resizing runs on the device with antialiased bilinear interpolation, as SAM's ``apply_image_torch``.
        """
        height, width = image.shape[:2]
        input_size = resized_shape(height, width, self.image_size)
        # np.require copies only arrays torch cannot wrap (read-only or non-contiguous).
        pixels = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(self.device).permute(2, 0, 1)[None].float()
        pixels = F.interpolate(pixels, input_size, mode="bilinear", align_corners=False, antialias=True)
        return self.model.preprocess(pixels[0]), input_size

    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray], batch_size: int = 1) -> List[ImageEmbedding]:
        """Encode each image once; ``batch_size`` images share an encoder call."""
        embeddings: List[ImageEmbedding] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            inputs, input_sizes = zip(*(self.preprocess(image) for image in chunk))
            with self._autocast():
                output = self.model.image_encoder(torch.stack(inputs))
            features, interm = (output if self.is_hq else (output, None))
            for i, image in enumerate(chunk):
                embeddings.append(
                    ImageEmbedding(
                        features=features[i : i + 1].float(),
                        original_size=tuple(image.shape[:2]),
                        input_size=input_sizes[i],
                        interm_features=None if interm is None else [t[i : i + 1].float() for t in interm],
                    )
                )
        return embeddings

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ decoder
    def scale_coords(self, coords: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """float ``... x 2`` (x, y) in original pixels -> the resized-image frame, as ``apply_coords``."""
        (height, width), (new_h, new_w) = embedding.original_size, embedding.input_size
        scale = torch.tensor([new_w / width, new_h / height], dtype=torch.float32, device=coords.device)
        return coords.float() * scale

    @torch.no_grad()
    def decode(
        self,
        embedding: ImageEmbedding,
        *,
        point_coords: Optional[torch.Tensor] = None,
        point_labels: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        mask_inputs: Optional[torch.Tensor] = None,
        multimask_output: bool = True,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode N prompt sets of one image, :attr:`prompts_per_call` at a time.

        Args:
            embedding: from :meth:`encode`.
            point_coords: float ``N x P x 2`` (x, y) in original-image pixels; label -1 marks "no point".
            point_labels: int ``N x P``: 1 foreground, 0 background, -1 padding.
            boxes: float ``N x 4`` ``x1, y1, x2, y2`` in original-image pixels.
            mask_inputs: float ``N x 1 x m x m`` dense prompts in the mask-input frame (m = 4 x embedding).

        Returns:
            low-res logits float32 ``N x K x m x m`` and predicted IoUs float32 ``N x K``
            (K = 3 with ``multimask_output``, else 1).
        """
        count = next(t.shape[0] for t in (point_coords, boxes, mask_inputs) if t is not None)
        logits, ious = [], []
        step = self.prompts_per_call
        for start in range(0, count, step):
            part = slice(start, start + step)
            points = None
            if point_coords is not None:
                points = (self.scale_coords(point_coords[part], embedding).to(self.device), point_labels[part].to(self.device))
            box = None if boxes is None else self.scale_coords(boxes[part].reshape(-1, 2, 2), embedding).reshape(-1, 4).to(self.device)
            dense = None if mask_inputs is None else mask_inputs[part].to(self.device)
            chunk_logits, chunk_ious = self._decode_chunk(embedding, points, box, dense, multimask_output)
            logits.append(chunk_logits.float())
            ious.append(chunk_ious.float())
        return torch.cat(logits), torch.cat(ious)

    def decode_boxes_with_grad(self, embedding: ImageEmbedding, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode box prompts in one call with autograd on, for training an adapter of the frozen decoder
        (only parameters with ``requires_grad`` get gradients).

        Args:
            boxes: float ``N x 4`` ``x1, y1, x2, y2`` in original-image pixels.

        Returns:
            low-res logits ``N x 3 x m x m`` and predicted IoUs ``N x 3`` (multimask output).
        """
        box = self.scale_coords(boxes.reshape(-1, 2, 2), embedding).reshape(-1, 4).to(self.device)
        with torch.enable_grad():
            return self._decode_chunk(embedding, None, box, None, True)

    def _decode_chunk(self, embedding, points, boxes, masks, multimask_output):
        with self._decoder_precision():
            return self._run_decoder(embedding, points, boxes, masks, multimask_output)

    @contextlib.contextmanager
    def _decoder_precision(self):
        """How the mask decoder's two-way transformer and output upscaling (nearly all of its arithmetic) run
        during one decoder call.

        The transformer gets the image embedding and its positional encoding in channels-last layout: it
        flattens them to ``B x HW x C`` tokens, which are then contiguous, so its additions and projections
        stop striding across memory and copying (about 10% of a CPU decoder pass). Every value is the
        same: only the layout of the inputs changes.

        With ``bf16``/``fp16`` both modules run in that dtype and hand float32 on; prompt encoding, the
        hypernetwork MLPs, the mask product and the IoU head stay float32, so thresholds and candidate
        ranking see float32. Without autograd they run as low-precision copies of the two modules (no
        per-call casts of weights and activations: on CPU that is most of autocast's cost); the copies
        follow the model's weights (recast when a parameter changes). With autograd (training an adapter)
        they run under autocast on the model's own modules, so gradients reach them.
        """
        dtype = PRECISIONS[self.precision]
        decoder = self.model.mask_decoder
        names = ("transformer", "output_upscaling")
        if dtype is None:
            forwards = [decoder.transformer.forward, decoder.output_upscaling.forward]
        elif torch.is_grad_enabled():
            forwards = [_autocast_to_float32(getattr(decoder, name).forward, self.device.type, dtype) for name in names]
        else:
            forwards = [_cast_to_float32(module, dtype) for module in self._low_precision_modules(names, dtype)]
        forwards[0] = _channels_last_images(forwards[0])
        for name, forward in zip(names, forwards):  # an instance attribute shadows the class's forward
            getattr(decoder, name).forward = forward
        try:
            yield
        finally:
            for name in names:
                del getattr(decoder, name).forward

    def _low_precision_modules(self, names, dtype) -> List[torch.nn.Module]:
        """``dtype`` copies of the named mask-decoder modules, remade when the model's weights changed."""
        decoder = self.model.mask_decoder
        sources = [getattr(decoder, name) for name in names]
        state = tuple((p.data_ptr(), p._version, p.device) for m in sources for p in m.parameters())
        if getattr(self, "_low_precision_state", None) != (dtype, state):
            self._low_precision_copies = [copy.deepcopy(m).to(dtype) for m in sources]
            self._low_precision_state = (dtype, state)
        return self._low_precision_copies

    def _run_decoder(self, embedding, points, boxes, masks, multimask_output):
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        kwargs = dict(
            image_embeddings=embedding.features,
            image_pe=dense_positional_encoding(self.model.prompt_encoder),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        if self.is_hq:
            kwargs.update(hq_token_only=False, interm_embeddings=embedding.interm_features)
        return self.model.mask_decoder(**kwargs)

    # ------------------------------------------------------------------ frames
    def mask_input_frame(self, embedding: ImageEmbedding) -> Tuple[AxisMap, AxisMap]:
        """The original -> mask-input chain of this image (cached on the embedding)."""
        if "mask_input" not in embedding.cache:
            embedding.cache["mask_input"] = to_mask_input(
                embedding.original_size, embedding.input_size, self.image_size, self.mask_input_size, self.device
            )
        return embedding.cache["mask_input"]

    def low_res_frame(self, embedding: ImageEmbedding) -> Tuple[AxisMap, AxisMap]:
        """The low-res logits -> original chain of this image (cached on the embedding)."""
        if "low_res" not in embedding.cache:
            embedding.cache["low_res"] = from_low_res(
                embedding.original_size, embedding.input_size, self.image_size, self.mask_input_size, self.device
            )
        return embedding.cache["low_res"]

    # ------------------------------------------------------------------ postprocess
    def upsample_masks(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding) -> np.ndarray:
        """float ``N x m x m`` low-res logits -> bool ``N x H x W`` masks (logit > 0 at the original size).

        Equals ``upsample_logits(...) > 0`` (up to float rounding at |logit| ~ 1e-6) but computes only the
        part of the image where a mask can be positive, so its cost follows the objects' size.
        """
        masks = np.zeros((low_res_logits.shape[0],) + tuple(embedding.original_size), dtype=bool)
        for i, (window, origin) in enumerate(self.upsample_windows(low_res_logits, embedding)):
            if window is not None:
                x0, y0 = origin
                masks[i, y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
        return masks

    def upsample_windows(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding) -> List[Tuple[Optional[np.ndarray], Optional[Tuple[int, int]]]]:
        """:meth:`upsample_masks` without the full-size arrays: per mask a bool window of its original-size
        mask and the window's top-left ``(x0, y0)`` (the mask is False outside), or ``(None, None)``."""
        rows, cols = self.low_res_frame(embedding)
        windows = []
        for logits in low_res_logits:
            window, origin = positive_window(rows, cols, logits.float())
            windows.append((None, None) if window is None else (window.cpu().numpy(), origin))
        return windows

    def upsample_logits_window(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding, box) -> torch.Tensor:
        """float ``m x m`` low-res logits of one mask -> float32 ``h x w`` logits at the original size on the
        inclusive ``box`` = (x1, y1, x2, y2) only: the same window of :meth:`upsample_logits` (up to float
        rounding), at a cost that follows the box's size."""
        rows, cols = self.low_res_frame(embedding)
        return output_window(rows, cols, low_res_logits.float(), box)

    def upsample_logits(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """float ``N x m x m`` low-res logits -> float32 ``N x H x W`` at the original size (``Sam.postprocess_masks``)."""
        logits = F.interpolate(low_res_logits[:, None].float(), (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        new_h, new_w = embedding.input_size
        logits = F.interpolate(logits[..., :new_h, :new_w], embedding.original_size, mode="bilinear", align_corners=False)
        return logits[:, 0]


# Per prompt encoder: (what the encoding depends on, the encoding).
_DENSE_PE: "weakref.WeakKeyDictionary[torch.nn.Module, Tuple[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()


def dense_positional_encoding(prompt_encoder: torch.nn.Module) -> torch.Tensor:
    """float32 ``1 x C x h x w`` ``prompt_encoder.get_dense_pe()`` in standard contiguous layout (same values),
    computed once per prompt encoder: it depends only on the encoder's fixed random projection (a buffer,
    recomputed when that buffer changes) and its grid size.

    SAM returns it as a permuted view (channels last in memory), and the mask decoder's
    ``repeat_interleave`` of such a tensor is a slow strided gather: about 7 ms of a ~90 ms fp32 vit_b pass
    on one CPU thread, against 0.3 ms for the contiguous copy.
    """
    buffer = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    # inference mode too: a tensor made there cannot take part in autograd (training) afterwards
    key = (buffer.data_ptr(), buffer._version, buffer.device, tuple(prompt_encoder.image_embedding_size),
           torch.is_inference_mode_enabled())
    cached = _DENSE_PE.get(prompt_encoder)
    if cached is None or cached[0] != key:
        cached = (key, prompt_encoder.get_dense_pe().contiguous())
        _DENSE_PE[prompt_encoder] = cached
    return cached[1]


def _channels_last_images(forward):
    """A two-way-transformer forward that receives ``image_embedding`` and ``image_pe`` (``B x C x H x W``)
    in channels-last layout (same values)."""

    def wrapped(image_embedding, image_pe, point_embedding):
        return forward(image_embedding.contiguous(memory_format=torch.channels_last),
                       image_pe.contiguous(memory_format=torch.channels_last), point_embedding)

    return wrapped


def _cast_to_float32(module: torch.nn.Module, dtype: torch.dtype):
    """A forward that runs ``module`` (already in ``dtype``) on its float inputs cast to ``dtype`` and casts
    its outputs (a tensor or tuple of tensors) to float32."""

    def forward(*args):
        output = module(*(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args))
        return tuple(t.float() for t in output) if isinstance(output, tuple) else output.float()

    return forward


def _autocast_to_float32(forward, device_type: str, dtype: torch.dtype):
    """``forward`` run under autocast, its tensor outputs (or tuple of them) cast to float32."""

    def wrapped(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=dtype):
            output = forward(*args, **kwargs)
        if isinstance(output, tuple):
            return tuple(t.float() for t in output)
        return output.float()

    return wrapped
