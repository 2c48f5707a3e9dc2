"""Build a SAM-family model from a registry name and checkpoint, or a tiny random one for tests."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .checkpoints import ensure_checkpoint, load_tensors
from .registry import get_spec

logger = logging.getLogger(__name__)

# Key under which a checkpoint written by :func:`save_tiny_checkpoint` carries its architecture.
TINY_CONFIG_KEY = "refine_hooks_tiny_sam_config"


@dataclasses.dataclass(frozen=True)
class TinySamConfig:
    """Dimensions of a small SAM made of the real ``segment_anything`` modules.

    The defaults give a model of ~0.1M parameters whose encoder takes a 256x256 input and produces a
    16x16 embedding (mask input 64x64), so a test refines dozens of masks in well under a second on CPU.
    """

    image_size: int = 256
    patch_size: int = 16
    encoder_embed_dim: int = 32
    encoder_depth: int = 2
    encoder_num_heads: int = 2
    encoder_window_size: int = 4
    prompt_embed_dim: int = 32
    decoder_depth: int = 2
    decoder_mlp_dim: int = 64
    decoder_num_heads: int = 2
    iou_head_hidden_dim: int = 32
    hq: bool = False  # HQ-SAM's modules (segment_anything_hq): encoder with early features, HQ decoder


def build_tiny_sam(config: TinySamConfig = TinySamConfig(), seed: int = 0) -> Sam:
    """A randomly initialised SAM with the dimensions of ``config``; the same ``seed`` gives the same weights."""
    embedding_size = config.image_size // config.patch_size
    if config.hq:
        modules = _hq_modules()
        Sam_, ImageEncoderViT_, PromptEncoder_, TwoWayTransformer_ = (
            modules.Sam, modules.ImageEncoderViT, modules.PromptEncoder, modules.TwoWayTransformer)
        decoder = partial(modules.MaskDecoderHQ, vit_dim=config.encoder_embed_dim)
    else:
        Sam_, ImageEncoderViT_, PromptEncoder_, TwoWayTransformer_ = Sam, ImageEncoderViT, PromptEncoder, TwoWayTransformer
        decoder = MaskDecoder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam_(
            image_encoder=ImageEncoderViT_(
                img_size=config.image_size,
                patch_size=config.patch_size,
                embed_dim=config.encoder_embed_dim,
                depth=config.encoder_depth,
                num_heads=config.encoder_num_heads,
                mlp_ratio=4,
                out_chans=config.prompt_embed_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=config.encoder_window_size,
                global_attn_indexes=(config.encoder_depth - 1,),
            ),
            prompt_encoder=PromptEncoder_(
                embed_dim=config.prompt_embed_dim,
                image_embedding_size=(embedding_size, embedding_size),
                input_image_size=(config.image_size, config.image_size),
                mask_in_chans=8,
            ),
            mask_decoder=decoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer_(
                    depth=config.decoder_depth,
                    embedding_dim=config.prompt_embed_dim,
                    mlp_dim=config.decoder_mlp_dim,
                    num_heads=config.decoder_num_heads,
                ),
                transformer_dim=config.prompt_embed_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=config.iou_head_hidden_dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        # The real modules keep PyTorch's default init, whose rel-pos tables are zeros; give them values
        # so every layer takes part, as it does with trained weights.
        for name, param in sam.named_parameters():
            if "rel_pos" in name:
                torch.nn.init.normal_(param, std=0.02)
    return sam.eval()


def save_tiny_checkpoint(path: Union[str, Path], config: TinySamConfig = TinySamConfig(), seed: int = 0) -> Path:
    """Write a tiny random SAM to ``path`` in a form :func:`build_sam_model` loads with any ``model_type``."""
    sam = build_tiny_sam(config, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({TINY_CONFIG_KEY: dataclasses.asdict(config), "model": sam.state_dict()}, path)
    return path


def build_sam_model(
    model_type: str = "vit_h",
    checkpoint: Optional[Union[str, Path]] = None,
    *,
    download: bool = True,
    seed: int = 0,
) -> Sam:
    """Build a SAM-family model in eval mode, on CPU.

    Args:
        model_type: a registry name (``vit_b``, ``vit_l``, ``vit_h``, ``sam_hq_vit_{b,l,h}``, ``tiny``).
        checkpoint: a local file. A file written by :func:`save_tiny_checkpoint` carries its own
            architecture and is loaded whatever ``model_type`` says. Without a file, the official
            checkpoint of ``model_type`` is taken from the cache or downloaded (``tiny``: random weights).
        download: allow downloading a missing official checkpoint.
        seed: the seed of a random ``tiny`` model.
    """
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        spec = get_spec(model_type)
        state = load_tensors(checkpoint, f"checkpoint {checkpoint} cannot be read as PyTorch weights (truncated, "
                                         "not a checkpoint, or holding more than tensors)")
        if isinstance(state, dict) and TINY_CONFIG_KEY in state:
            config = TinySamConfig(**state[TINY_CONFIG_KEY])
            if spec.family != "tiny":
                logger.warning(f"warning: {checkpoint} is a tiny random SAM (written by save_tiny_checkpoint) and "
                               f"carries its own architecture: running {'tiny_hq' if config.hq else 'tiny'}, "
                               f"not model type {model_type}")
            sam = build_tiny_sam(config)
            _load_state_dict(sam, state["model"], checkpoint, "tiny")
            return sam
        if spec.family == "tiny":
            raise ValueError(f"{checkpoint} is not a tiny-SAM checkpoint (written by save_tiny_checkpoint); "
                             f"{_looks_like(_unwrap(state))}pass its model type")
        sam = _build_architecture(spec.family, spec.builder)
        _load_state_dict(sam, _unwrap(state), checkpoint, model_type)
        return sam.eval()
    spec = get_spec(model_type)
    if spec.family == "tiny":
        return build_tiny_sam(TinySamConfig(hq=model_type == "tiny_hq"), seed=seed)
    path = ensure_checkpoint(spec, download=download)
    return build_sam_model(model_type, path)


def build_random_sam(model_type: str, seed: int = 0) -> torch.nn.Module:
    """The architecture of ``model_type`` with random weights: only for measuring speed and memory,
    which do not depend on the weights."""
    spec = get_spec(model_type)
    if spec.family == "tiny":
        return build_tiny_sam(TinySamConfig(hq=model_type == "tiny_hq"), seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_architecture(spec.family, spec.builder).eval()


def _hq_modules():
    try:
        with warnings.catch_warnings():  # its timm imports use deprecated paths
            warnings.simplefilter("ignore")
            import segment_anything_hq.modeling as modules
    except ImportError as error:
        raise ImportError("HQ-SAM models need the segment-anything-hq package: pip install 'refine_hooks[hq]'") from error
    return modules


def _build_architecture(family: str, builder: str) -> torch.nn.Module:
    if family == "sam":
        from segment_anything import sam_model_registry
    else:
        _hq_modules()
        from segment_anything_hq import sam_model_registry
    return sam_model_registry[builder](checkpoint=None)


def _unwrap(state: Any) -> Dict[str, torch.Tensor]:
    """Accept a plain state dict or one nested under ``model``/``state_dict`` (fine-tuned checkpoints)."""
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


# Width of the image encoder's patch embedding -> official model (SAM and HQ-SAM alike).
_ENCODER_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def _looks_like(state_dict: Any) -> str:
    """'it looks like a vit_h checkpoint; ' when the file's encoder width says so, else ''."""
    if not isinstance(state_dict, dict):
        return ""
    weight = state_dict.get("image_encoder.patch_embed.proj.weight")
    name = _ENCODER_WIDTHS.get(int(weight.shape[0])) if isinstance(weight, torch.Tensor) and weight.ndim else None
    if name is None:
        return ""
    hq = any(key.startswith("mask_decoder.hf_") for key in state_dict)
    return f"it looks like a {'sam_hq_' if hq else ''}{name} checkpoint; "


def _load_state_dict(sam: torch.nn.Module, state_dict: Any, path: Path, model_type: str) -> None:
    """Load weights that must fit exactly; otherwise one ``ValueError`` line saying how they differ."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"checkpoint {path} holds no state dict of tensors (a {type(state_dict).__name__})")
    expected = sam.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k in state_dict if k in expected and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        example = (f" (e.g. {reshaped[0]}: {tuple(state_dict[reshaped[0]].shape)} in the file, "
                   f"{tuple(expected[reshaped[0]].shape)} in the model)" if reshaped else "")
        raise ValueError(
            f"checkpoint {path} does not fit model type {model_type}: {len(reshaped)} tensors of another shape"
            f"{example}, {len(missing)} missing, {len(unexpected)} unexpected; "
            f"{_looks_like(state_dict)}is --model-type right?")
    sam.load_state_dict(state_dict)
