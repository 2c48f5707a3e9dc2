#!/usr/bin/env python
"""Train a refiner (Phoenix, or SUM's mask-refinement module with --noise sam) on a frozen SAM.

    python tools/train_refiner.py --coco lvis_v1_train.json coco/ --model-type vit_h --out phoenix_vit_h.pth
    torchrun --nproc_per_node=8 tools/train_refiner.py --coco lvis_v1_train.json coco/ --out phoenix_vit_h.pth
    python tools/train_refiner.py --pairs DIS5K/DIS-TR/im DIS5K/DIS-TR/gt --out phoenix_dis.pth
    python tools/train_refiner.py --unlabeled images/ --out phoenix_selfsup.pth     # no annotations at all
    python tools/train_refiner.py --unlabeled images/ --coco lvis.json coco/ --target-uncertainty '{"type": "SAMRefiner"}' \
        --out sum_mixed.pth     # SUM: pseudo-targets weighted by their certainty, a task prompt per source

Then refine with it:  tools/refine_pseudo_labels.py IN --images DIR --out OUT --refiner phoenix --refiner-checkpoint PATH
Defaults reproduce Phoenix's published settings (README, "Phoenix"). Rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refine_hooks import cli  # noqa: E402
from refine_hooks.sam import CheckpointUnavailableError  # noqa: E402
from refine_hooks.refiners import check_refiner_config  # noqa: E402
from refine_hooks.sam.refiner_weights import RefinerCheckpointError, read_refiner_checkpoint  # noqa: E402
from refine_hooks.training.phoenix import (  # noqa: E402
    AMPConfig, CMRLConfig, SamNoiseConfig, SelfSupervisedConfig, TrainingConfig, TrainingData, TrainingDataError,
    TrainingResumeError, train_refiner)
from refine_hooks.training.phoenix.certainty import load_refiner_config  # noqa: E402
from refine_hooks.training.phoenix.config import CRITERIA, GUIDANCE_KINDS, MASK_ENCODINGS, NOISE_KINDS, PRECISIONS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    defaults, amp, cmrl = TrainingConfig(), AMPConfig(), CMRLConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (any mix, each repeatable)")
    data.add_argument("--coco", nargs=2, action="append", default=[], metavar=("ANNOTATIONS", "IMAGE_ROOT"),
                      help="COCO or LVIS annotation file and the folder its file names (LVIS: coco_url) are under")
    data.add_argument("--pairs", nargs=2, action="append", default=[], metavar=("IMAGE_DIR", "MASK_DIR"),
                      help="images and masks paired by file name (DIS5K, ThinObject-5K)")
    data.add_argument("--unlabeled", action="append", default=[], metavar="IMAGE_DIR",
                      help="self-supervised: SAM's confident masks (4x4 point grid) are the targets")
    data.add_argument("--skip-missing-images", action="store_true", help="drop unreadable images instead of stopping")

    model = parser.add_argument_group("model")
    model.add_argument("--out", required=True, help="refiner checkpoint to write")
    model.add_argument("--model-type", default="vit_h", type=cli.model_type,
                       help="SAM: vit_b, vit_l, vit_h, tiny (default vit_h)")
    model.add_argument("--checkpoint", help="SAM weights (default: the official file, downloaded and cached)")
    model.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    model.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                       help="autocast for the decoder (fp16 as the paper on GPU; default fp32)")

    method = parser.add_argument_group("method (defaults: Phoenix's)")
    method.add_argument("--noise", default=defaults.noise, choices=NOISE_KINDS,
                        help="adversarial (AMP), sam (SUM's SAM pseudo-labels), morphological (default adversarial)")
    method.add_argument("--contrastive", action=argparse.BooleanOptionalAction, default=cmrl.enabled, help="CMRL")
    method.add_argument("--p-morph", type=float, default=defaults.p_morph, help="share of morphological noise (default 0)")
    method.add_argument("--cascade-steps", type=cli.non_negative_int, default=defaults.cascade_steps,
                        help=f"extra steps on the model's own output (default {defaults.cascade_steps})")
    method.add_argument("--prompt-dropout", type=float, default=defaults.prompt_dropout)
    method.add_argument("--mask-encoding", default=defaults.mask_encoding, choices=MASK_ENCODINGS,
                        help="how the noisy mask enters (binary +-30, or SAMRefiner's distance Gaussian)")
    method.add_argument("--freeze-prompt-encoder", action="store_true", help="train the mask decoder only")
    method.add_argument("--amp-tokens", type=cli.positive_int, default=amp.num_tokens, help="P (default 50)")
    method.add_argument("--amp-step-size", type=cli.positive_float, default=amp.step_size, help="α0 (default 0.01)")
    method.add_argument("--amp-steps", type=cli.positive_int, default=amp.inner_steps, help="N (default 10)")
    method.add_argument("--amp-decays", type=cli.non_negative_int, default=amp.max_decays, help="step-size decays (default 3)")
    method.add_argument("--amp-tau", type=float, nargs=2, default=list(amp.tau_range), metavar=("LOW", "HIGH"),
                        help="τ ~ U(LOW, HIGH) (default 0.3 0.9)")
    method.add_argument("--amp-guidance", nargs="+", default=list(amp.guidance), choices=GUIDANCE_KINDS)
    method.add_argument("--amp-criterion", default=amp.criterion, choices=CRITERIA)
    method.add_argument("--filter-predicted-iou", type=float, default=SamNoiseConfig().min_predicted_iou,
                        help="SAM's quality filter for --noise sam and --unlabeled targets (default 0.88)")
    method.add_argument("--filter-stability", type=float, default=SamNoiseConfig().min_stability,
                        help="SAM's stability filter for --noise sam and --unlabeled targets (default 0.95)")
    method.add_argument("--cmrl-weight", type=cli.non_negative_float, default=cmrl.weight, help="λ_CMRL (default 1e-3)")
    method.add_argument("--cmrl-temperature", type=cli.positive_float, default=cmrl.temperature, help="τ of CMRL (default 0.1)")

    sum_ = parser.add_argument_group("SUM's uncertainty-aware training (docs/phoenix.md)")
    sum_.add_argument("--target-uncertainty", metavar="REFINER_CONFIG",
                      help="--unlabeled: weight pseudo-targets by SUM's certainty 1 - |sigma(target) - sigma(refined)|, "
                           "refined by this refiner: a JSON object or a JSON file holding one, e.g. "
                           "'{\"type\": \"SAMRefiner\", \"iterations\": 3}' or '{\"type\": \"Phoenix\", "
                           "\"refiner_checkpoint\": \"x.pth\"}' (model_type / checkpoint: the trained SAM's)")
    sum_.add_argument("--task-prompt", action=argparse.BooleanOptionalAction, default=None,
                      help="SUM's task prompt, a learned embedding per task (pseudo / salient object / entity) added to "
                           "the image embedding (default: on when the sources are of more than one task)")

    optim = parser.add_argument_group("optimisation (defaults: Phoenix's)")
    optim.add_argument("--iterations", type=cli.positive_int, default=defaults.iterations)
    optim.add_argument("--batch-size", type=cli.positive_int, default=defaults.batch_size, help="global batch over all processes")
    optim.add_argument("--lr", type=cli.positive_float, default=defaults.lr)
    optim.add_argument("--weight-decay", type=cli.non_negative_float, default=defaults.weight_decay)
    optim.add_argument("--warmup", type=cli.non_negative_int, default=defaults.warmup)
    optim.add_argument("--grad-clip", type=cli.positive_float, default=defaults.grad_clip)
    optim.add_argument("--hflip", type=float, default=defaults.hflip)
    optim.add_argument("--colour-jitter", type=cli.non_negative_float, default=defaults.colour_jitter)
    optim.add_argument("--min-area", type=cli.positive_int, default=defaults.min_area, help="targets with fewer pixels are skipped")
    optim.add_argument("--seed", type=int, default=defaults.seed)

    run = parser.add_argument_group("run")
    run.add_argument("--work-dir", help="checkpoints and log (default OUT.work/); rerun to resume")
    run.add_argument("--cache-dir", help="keep the frozen encoder's embeddings here (fp16; colour jitter off)")
    run.add_argument("--workers", type=cli.non_negative_int, default=min(4, os.cpu_count() or 1), help="image-decoding workers")
    run.add_argument("--checkpoint-every", type=cli.positive_int, default=500, help="iterations between checkpoints")
    run.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    target_uncertainty = load_refiner_config(args.target_uncertainty) if args.target_uncertainty else None
    return TrainingConfig(
        noise=args.noise, p_morph=args.p_morph, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=args.grad_clip, prompt_dropout=args.prompt_dropout,
        hflip=args.hflip, colour_jitter=args.colour_jitter, cascade_steps=args.cascade_steps,
        train_prompt_encoder=not args.freeze_prompt_encoder, mask_encoding=args.mask_encoding, min_area=args.min_area,
        precision=args.precision, seed=args.seed, target_uncertainty=target_uncertainty, task_prompt=args.task_prompt,
        amp=AMPConfig(num_tokens=args.amp_tokens, step_size=args.amp_step_size, inner_steps=args.amp_steps,
                      max_decays=args.amp_decays, tau_range=tuple(args.amp_tau), guidance=tuple(args.amp_guidance),
                      criterion=args.amp_criterion),
        cmrl=CMRLConfig(enabled=args.contrastive, weight=args.cmrl_weight, temperature=args.cmrl_temperature),
        sam_noise=SamNoiseConfig(min_predicted_iou=args.filter_predicted_iou, min_stability=args.filter_stability),
        self_supervised=SelfSupervisedConfig(min_predicted_iou=args.filter_predicted_iou, min_stability=args.filter_stability),
    )


def check_command_line(args: argparse.Namespace, data: TrainingData) -> None:
    """Everything that can be checked before any data is read (see refine_hooks.cli)."""
    if data.empty:
        cli.fail("no training data: give --coco ANNOTATIONS IMAGE_ROOT, --pairs IMAGE_DIR MASK_DIR or --unlabeled IMAGE_DIR")
    cli.require_files({"--coco": [annotations for annotations, _ in data.coco], "--checkpoint": args.checkpoint})
    for name, folders in (("--coco", [root for _, root in data.coco]), ("--pairs", [f for pair in data.pairs for f in pair]),
                          ("--unlabeled", data.unlabeled)):
        for folder in folders:
            cli.require_directory(name, folder)
    cli.check_output_path("--out", args.out, suffixes=(".pth", ".pt"), what="a refiner checkpoint (torch archive)")
    inputs = {"--coco": [annotations for annotations, _ in data.coco], "--checkpoint": args.checkpoint}
    cli.refuse_overwriting_inputs({"--out": args.out}, inputs)
    if args.target_uncertainty:
        if not data.unlabeled:
            cli.fail("--target-uncertainty weights pseudo-targets by SUM's certainty; it needs --unlabeled IMAGE_DIR "
                     "(human-labelled targets are trusted everywhere)")
        refiner = load_refiner_config(args.target_uncertainty)  # ValueError naming the file or text
        check_refiner_config(refiner, f"--target-uncertainty {args.target_uncertainty}")
        if refiner.get("type") == "Phoenix":
            if not refiner.get("refiner_checkpoint"):
                cli.fail(f"--target-uncertainty {args.target_uncertainty}: a Phoenix refiner needs \"refiner_checkpoint\"")
            read_refiner_checkpoint(refiner["refiner_checkpoint"])  # RefinerCheckpointError naming the file


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    data = TrainingData(coco=[tuple(c) for c in args.coco], pairs=[tuple(p) for p in args.pairs],
                        unlabeled=args.unlabeled, skip_missing_images=args.skip_missing_images)
    check_command_line(args, data)
    device = cli.checked_device(args.device)
    config = config_from_args(args)
    summary = train_refiner(data, args.out, config, model_type=args.model_type, checkpoint=args.checkpoint,
                            device=device, work_dir=args.work_dir, cache_dir=args.cache_dir, workers=args.workers,
                            checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {summary['iterations']} iterations on {summary['samples']} targets; log: {summary['log']}")
        print(f"written: {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, errors=(TrainingDataError, RefinerCheckpointError, ValueError),
                     environment_errors=(TrainingResumeError, CheckpointUnavailableError)))
