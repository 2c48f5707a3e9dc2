"""Benchmark SAMRefiner on one generated image: time per stage, masks/s and peak memory.

    python tools/benchmark.py refiner --model-type vit_b --image-size 480x640 --masks 50
    python tools/benchmark.py refiner --model-type vit_b --masks 50 --precision fp32 bf16   # side by side

Weights are random (cost does not depend on them), so no checkpoint is needed. Besides seconds, it counts
the floating-point work of one encoder pass and of one decoder pass (torch's ``FlopCounterMode`` on a
copy of the model made of meta tensors, so counting costs no compute) and the decoder passes the refiner
made: ``decoder_gflop_total / encoder_gflop`` says how much of the encoder's work the masks add, whatever
the machine. With several ``--precision`` values each lower precision is also compared with fp32 on the
same masks: the fraction of refined masks identical to fp32's and their mean IoU with them.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..refiners import Phoenix, SAMRefiner
from ..sam import SamEngine, build_random_sam
from ..sam.refiner_weights import sam_fingerprint, trained_state
from ..timing import StageTimer


def generate_scene(height: int, width: int, num_masks: int, seed: int = 0):
    """uint8 ``H x W x 3`` noise image and ``num_masks`` bool ellipse masks of assorted sizes."""
    rng = np.random.RandomState(seed)
    image = rng.randint(0, 256, size=(height, width, 3), dtype=np.uint8)
    masks = np.zeros((num_masks, height, width), dtype=np.uint8)
    for mask in masks:
        axes = (int(rng.randint(5, max(6, width // 6))), int(rng.randint(5, max(6, height // 6))))
        center = (int(rng.randint(0, width)), int(rng.randint(0, height)))
        cv2.ellipse(mask, center, axes, float(rng.randint(0, 180)), 0, 360, 1, -1)
    return image, masks.astype(bool)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def pass_gflop(model: torch.nn.Module) -> Dict[str, float]:
    """GFLOP of one image-encoder pass and of one decoder pass (prompt encoder + mask decoder).

    The decoder pass decodes one prompt set with every prompt type the refiner uses (two points, a box
    and a dense mask), with multimask output. The image encoder and the mask decoder are counted on a
    copy made of meta tensors (nothing is computed); the prompt encoder indexes by label, which meta
    tensors cannot do, so it runs for real on one small prompt set.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    size = meta.image_encoder.img_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoded = meta.image_encoder(torch.zeros(1, 3, size, size, device="meta"))
    encoder = counter.get_total_flops()
    features, interm = encoded if isinstance(encoded, tuple) else (encoded, None)
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        sparse, dense = model.prompt_encoder(
            points=(torch.zeros(1, 2, 2, device=device), torch.tensor([[1, 0]], device=device)),
            boxes=torch.zeros(1, 4, device=device),
            masks=torch.zeros(1, 1, *model.prompt_encoder.mask_input_size, device=device),
        )
        kwargs = dict(image_embeddings=features, image_pe=meta.prompt_encoder.get_dense_pe(),
                      sparse_prompt_embeddings=sparse.to("meta"), dense_prompt_embeddings=dense.to("meta"),
                      multimask_output=True)
        if hasattr(meta.mask_decoder, "hf_token"):
            kwargs.update(hq_token_only=False, interm_embeddings=interm)
        meta.mask_decoder(**kwargs)
    return {"encoder_gflop": encoder / 1e9, "decoder_pass_gflop": counter.get_total_flops() / 1e9}


def count_decoder_passes(model: torch.nn.Module):
    """Count the prompt sets the model's mask decoder decodes from now on.

    Returns a one-element list holding the count, and the hook handle (``.remove()`` stops counting).
    """
    passes = [0]

    def count(_module, _args, kwargs):
        passes[0] += int(kwargs["sparse_prompt_embeddings"].shape[0])

    handle = model.mask_decoder.register_forward_pre_hook(count, with_kwargs=True)
    return passes, handle


def random_phoenix_state(model: torch.nn.Module) -> Dict[str, object]:
    """A refiner checkpoint's contents for a random SAM (its own decoder as the "trained" one, Phoenix's
    default prompts and mask encoding): what a Phoenix refiner costs does not depend on its weights."""
    return {"kind": "phoenix", "sam_fingerprint": sam_fingerprint(model), "weights": trained_state(model),
            "mask_prompt": {"encoding": "binary", "strength": 30.0, "gamma": 4.0},
            "prompts": {"use_point": True, "use_box": True, "add_negative": True}}


def run(model_type: str, height: int, width: int, num_masks: int, *, iterations: int = 5, device: str = "cpu",
        precision: str = "fp32", decoder_chunk_size: int = 64, repeats: int = 1, refiner: str = "samrefiner",
        outputs: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, float]:
    """Refine one generated image ``repeats`` times; seconds per stage are per image (mean).

    ``outputs``, when given, receives the refined masks under ``"masks"`` (bool ``N x H x W``)."""
    timer = StageTimer(cuda_sync=device.startswith("cuda"))
    with timer("load"):
        engine = SamEngine(build_random_sam(model_type), device=device, precision=precision, decoder_chunk_size=decoder_chunk_size)
    if refiner == "phoenix":
        refiner_ = Phoenix(engine, random_phoenix_state(engine.model), iterations=iterations, timer=timer)
    else:
        refiner_ = SAMRefiner(engine, iterations=iterations, timer=timer)
    image, masks = generate_scene(height, width, num_masks)
    refiner_.refine(image, masks[:1])  # warm-up: first-call allocations and kernel selection
    timer.seconds.clear()
    work = pass_gflop(engine.model)  # before the pass counter: a deep copy would carry its hook
    decoder_passes, counting = count_decoder_passes(engine.model)
    start = time.perf_counter()
    for _ in range(repeats):
        result = refiner_.refine(image, masks)
    if outputs is not None:
        outputs["masks"] = result.masks
    total = (time.perf_counter() - start) / repeats
    stages = {stage: seconds / repeats for stage, seconds in timer.seconds.items()}
    outside_encoder = total - stages.get("encode", 0.0)
    counting.remove()
    passes = decoder_passes[0] / repeats
    return {
        "refiner": refiner,
        "model_type": model_type,
        "image_size": f"{height}x{width}",
        "masks": num_masks,
        "iterations": iterations,
        "device": device,
        "precision": precision,
        **{f"{stage}_s": round(value, 4) for stage, value in sorted(stages.items())},
        "total_s": round(total, 4),
        "outside_encoder_s": round(outside_encoder, 4),
        "masks_per_s": round(num_masks / total, 2),
        "encoder_gflop": round(work["encoder_gflop"], 2),
        "decoder_pass_gflop": round(work["decoder_pass_gflop"], 4),
        "decoder_passes": passes,
        "decoder_gflop_total": round(passes * work["decoder_pass_gflop"], 2),
        "peak_memory_mb": round(peak_memory_mb(torch.device(device)), 1),
        "torch_threads": torch.get_num_threads(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tools/benchmark.py refiner``."""
    from .. import cli

    parser.add_argument("--model-type", default="tiny", type=cli.model_type)
    parser.add_argument("--image-size", default="480x640", type=image_size, help="HxW")
    parser.add_argument("--masks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"],
                        help="one or more, run side by side on the same masks; lower precisions are compared "
                             "with fp32 when it is among them (identical_to_fp32, mean_iou_to_fp32)")
    parser.add_argument("--decoder-chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--refiner", nargs="+", default=["samrefiner"], choices=["samrefiner", "phoenix"],
                        help="one or both, measured side by side on the same masks (phoenix: random weights)")
    parser.add_argument("--json", help="append results as JSON lines to this file")


def image_size(text: str):
    """``argparse`` type: ``HxW`` -> ``(H, W)``."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes HxW, e.g. 480x640, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"takes a positive HxW, got {text!r}")
    return height, width


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py refiner", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    from .. import cli

    cli.checked_device(args.device)
    height, width = args.image_size
    precisions = sorted(set(args.precision), key=args.precision.index)
    if "fp32" in precisions:  # fp32 first: the others are compared with it
        precisions.remove("fp32")
        precisions.insert(0, "fp32")
    for count in args.masks:
        for refiner in args.refiner:
            reference = None
            for precision in precisions:
                outputs: Dict[str, np.ndarray] = {}
                result = run(args.model_type, height, width, count, iterations=args.iterations, device=args.device,
                             precision=precision, decoder_chunk_size=args.decoder_chunk_size, repeats=args.repeats,
                             refiner=refiner, outputs=outputs)
                if precision == "fp32":
                    reference = outputs["masks"]
                elif reference is not None:
                    result.update(agreement(outputs["masks"], reference))
                print(json.dumps(result))
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(result) + "\n")
    return 0


def agreement(masks: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """How bool ``N x H x W`` masks compare with the reference's: the fraction identical pixel for pixel and
    the mean IoU (1 where both are empty)."""
    from ..data.masks import mask_iou

    identical = (masks == reference).reshape(len(masks), -1).all(axis=1)
    return {"identical_to_fp32": round(float(identical.mean()), 4),
            "mean_iou_to_fp32": round(float(mask_iou(masks, reference).mean()), 6)}
