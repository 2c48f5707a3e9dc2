"""A stand-in for pre-trained SAM: a tiny SAM fitted (encoder, prompt encoder, decoder) to generated shapes.

AMP needs a decoder that already segments what its prompts point at (a random decoder's masks are
unrelated to the target, so there is no IoU band to search), and no real SAM weights exist here. This
fits the prompt encoder and mask decoder of a small SAM of the real ``segment_anything`` modules to
:mod:`shapes` scenes from the prompts SAM is trained with: the target's mined points and tight box (mask
token 0, the output AMP perturbs) and one random point inside (the multimask tokens, best of three).
The image encoder stays random and frozen: its patch-4 features carry enough of the texture for the
decoder to segment, each image is encoded once, and fitting the encoder too cost ~10 CPU minutes more.
It is test scaffolding, not product code.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from refine_hooks.refiners import SAMRefiner
from refine_hooks.sam import SamEngine, TinySamConfig, build_tiny_sam
from refine_hooks.sam.build import TINY_CONFIG_KEY
from refine_hooks.sam.engine import ImageEmbedding
from refine_hooks.training.phoenix.decoder import PromptDecoder, PromptSet, embed_prompts
from refine_hooks.training.phoenix.losses import dice_loss, focal_loss
from refine_hooks.training.phoenix.step import low_res_frame_masks

STANDIN_CONFIG = TinySamConfig(image_size=128, patch_size=4, encoder_embed_dim=48, encoder_depth=2,
                               encoder_num_heads=2, encoder_window_size=8, prompt_embed_dim=32,
                               decoder_depth=2, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per sample over the valid pixels (``B x ...``, as the other losses)."""
    return focal_loss(logits, targets, valid, alpha=-1.0, gamma=0.0)


def fit_standin_sam(scenes, *, steps: int, batch: int = 8, lr: float = 5e-3, seed: int = 0, train_encoder: bool = False,
                    config: TinySamConfig = STANDIN_CONFIG):
    """Fit a tiny SAM to ``scenes`` (``[{"image", "masks"}]``); returns it in eval mode with a log of losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sam = build_tiny_sam(config, seed=seed)
    engine = SamEngine(sam)
    prompter = SAMRefiner(engine, use_mask=False, margin=0.0)
    decoder = PromptDecoder(sam.prompt_encoder, sam.mask_decoder, batch_invariant=False)
    sam.image_encoder.requires_grad_(train_encoder)
    trained = list(sam.prompt_encoder.parameters()) + list(sam.mask_decoder.parameters())
    if train_encoder:
        trained += list(sam.image_encoder.parameters())
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    embeddings = {}  # (scene, flipped) -> ImageEmbedding, encoded once
    losses = []
    for _ in range(steps):
        features, sets_box, sets_point, targets, valid = [], [], [], [], []
        for row in range(batch):
            index, flip = int(rng.integers(len(scenes))), bool(rng.random() < 0.5)
            scene = scenes[index]
            target = scene["masks"][int(rng.integers(len(scene["masks"])))]
            image = scene["image"]
            if flip:
                image, target = image[:, ::-1].copy(), target[:, ::-1].copy()
            if train_encoder:
                pixels, input_size = engine.preprocess(image)
                features.append(sam.image_encoder(pixels[None]))
                embedding = ImageEmbedding(features[-1].detach(), image.shape[:2], input_size)
            else:
                if (index, flip) not in embeddings:
                    embeddings[(index, flip)] = engine.encode([image])[0]
                embedding = embeddings[(index, flip)]
                features.append(embedding.features)
            box_prompts = prompter.prompts_for(embedding, target[None])
            ys, xs = np.nonzero(target)
            k = int(rng.integers(ys.size))
            point = {"point_coords": torch.tensor([[[float(xs[k]), float(ys[k])]]]), "point_labels": torch.ones((1, 1), dtype=torch.int64)}
            sets_box.append(PromptSet(*embed_prompts(sam.prompt_encoder, engine, embedding, box_prompts), row))
            sets_point.append(PromptSet(*embed_prompts(sam.prompt_encoder, engine, embedding, point), row))
            targets.append(low_res_frame_masks(engine, embedding, target))
            valid.append(low_res_frame_masks(engine, embedding, np.ones(target.shape, bool)))
        images = torch.cat(features)
        targets, valid = torch.stack(targets), torch.stack(valid)
        box_out = decoder(images, sets_box)
        point_out = decoder(images, sets_point)
        # BCE + Dice: from random weights it converges much faster than SAM's 20 focal + 1 Dice, which first
        # drives every logit negative on small objects.
        box_loss = bce_loss(box_out.logits[:, 0], targets, valid) + dice_loss(box_out.logits[:, 0], targets, valid)
        point_losses = bce_loss(point_out.candidates, targets, valid) + dice_loss(point_out.candidates, targets, valid)
        loss = box_loss.mean() + point_losses.min(dim=1).values.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return sam.eval(), losses


def save_standin(sam, path: str, config: TinySamConfig = STANDIN_CONFIG) -> str:
    """A tiny-SAM checkpoint of the fitted stand-in (``--model-type tiny --checkpoint path`` loads it)."""
    torch.save({TINY_CONFIG_KEY: dataclasses.asdict(config), "model": sam.state_dict()}, path)
    return path


def box_prompt_masks(sam, scenes, device: str = "cpu"):
    """``[(mask, target)]``: the stand-in's token-0 mask for each target's mined points and tight box (what
    AMP starts from), bool ``H x W`` each."""
    engine = SamEngine(sam, device=device)
    prompter = SAMRefiner(engine, use_mask=False, margin=0.0)
    pairs = []
    for scene in scenes:
        embedding = engine.encode([scene["image"]])[0]
        for target in scene["masks"]:
            logits, _ = engine.decode(embedding, multimask_output=False, **prompter.prompts_for(embedding, target[None]))
            pairs.append((engine.upsample_masks(logits[:, 0], embedding)[0], target))
    return pairs
