"""The Detectron2 adapter with real Detectron2 (random-weight Mask R-CNN from the model zoo config, on CPU).

Skipped when Detectron2 is not installed (it is not on PyPI: tools/install_detectron2.sh), failed instead
when REFINE_HOOKS_REQUIRE names detectron2 (CI).
"""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from frameworks import import_framework

import_framework("detectron2", "detectron2", "detectron2._C")

from detectron2 import model_zoo  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, get_cfg, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.evaluation import COCOEvaluator, inference_on_dataset  # noqa: E402
from detectron2.modeling import GeneralizedRCNN, build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from refine_hooks.data.images import load_image  # noqa: E402
from refine_hooks.detectron2 import (  # noqa: E402
    COCOBoundaryEvaluator, RefinementOptions, add_refiner_config, refined_meta_arch, with_refiner)
from refine_hooks.detectron2.evaluation import RESULTS_FILE  # noqa: E402
from refine_hooks.detectron2.images import image_from_input  # noqa: E402
from refine_hooks.evaluation import evaluate_coco  # noqa: E402
from refine_hooks.refiners import build_refiner  # noqa: E402
from tiny_coco import make_tiny_coco, mask_polygons  # noqa: E402

ITERATIONS = 2
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_cfg(dataset_name, sam_checkpoint, refined=True):
    cfg = get_cfg()
    add_refiner_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep low-scoring detections
    cfg.TEST.DETECTIONS_PER_IMAGE = 6
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 160
    cfg.INPUT.MASK_FORMAT = "bitmask"  # the annotation file mixes polygons and RLE
    cfg.DATASETS.TEST = (dataset_name,)
    cfg.MODEL.REFINER.MODEL_TYPE = "tiny"
    cfg.MODEL.REFINER.CHECKPOINT = sam_checkpoint
    cfg.MODEL.REFINER.KEEP_UNREFINED = True
    cfg.MODEL.REFINER.SAMREFINER.ITERATIONS = ITERATIONS
    if refined:
        cfg.MODEL.META_ARCHITECTURE = "RefinedMetaArch"
    return cfg


def inputs_of(cfg, dataset_name):
    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(copy.deepcopy(record)) for record in DatasetCatalog.get(dataset_name)]


@pytest.fixture(scope="module")
def models(dataset, sam_checkpoint, tmp_path_factory):
    """A plain Mask R-CNN with random weights, its checkpoint, and a refined one loaded from it."""
    name, _ = dataset
    torch.manual_seed(0)
    plain = build_model(make_cfg(name, sam_checkpoint, refined=False)).eval()
    # Random ResNet features are huge, so random class logits put all probability on "background" and
    # random deltas throw boxes off the image. Zero weights there give every proposal (= an anchor) the
    # score 1/3 per class: real detections with real masks from the random mask head.
    for layer in (plain.proposal_generator.rpn_head.anchor_deltas, plain.roi_heads.box_predictor.cls_score,
                  plain.roi_heads.box_predictor.bbox_pred):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    directory = str(tmp_path_factory.mktemp("d2_ckpt"))
    DetectionCheckpointer(plain, save_dir=directory).save("plain")
    cfg = make_cfg(name, sam_checkpoint)
    refined = build_model(cfg).eval()
    DetectionCheckpointer(refined).load(os.path.join(directory, "plain.pth"))
    return plain, refined, cfg, os.path.join(directory, "plain.pth")


def test_one_config_line_refines_with_the_core_refiner(dataset, sam_checkpoint, models):
    name, _ = dataset
    plain, refined, cfg, _ = models
    assert isinstance(refined, GeneralizedRCNN) and type(refined).__name__ == "RefinedGeneralizedRCNN"
    inputs = inputs_of(cfg, name)
    with torch.no_grad():
        coarse_outputs = plain(inputs)
        outputs = refined(inputs)
    refiner = build_refiner(dict(type="SAMRefiner", model_type="tiny", checkpoint=sam_checkpoint, iterations=ITERATIONS))
    changed = 0
    for record, coarse_output, output in zip(inputs, coarse_outputs, outputs):
        coarse, instances = coarse_output["instances"], output["instances"]
        assert len(instances) == len(coarse) > 0
        # The plain checkpoint loaded into the refined model: same detections before refinement.
        assert torch.equal(instances.unrefined_masks, coarse.pred_masks)
        assert torch.equal(instances.scores, coarse.scores)
        assert torch.equal(instances.pred_boxes.tensor, coarse.pred_boxes.tensor)  # box-head boxes are kept
        assert instances.pred_masks.dtype == torch.bool
        assert instances.pred_masks.shape == (len(instances), record["height"], record["width"])
        expected = refiner.refine(load_image(record["file_name"]), coarse.pred_masks.numpy())
        assert np.array_equal(instances.refined.numpy(), expected.refined)
        assert np.array_equal(instances.pred_masks.numpy(), np.where(expected.refined[:, None, None], expected.masks,
                                                                     coarse.pred_masks.numpy()))
        ious = instances.refine_iou.numpy()
        assert np.allclose(ious[expected.refined], expected.iou_predictions[expected.refined])
        assert np.isnan(ious[~expected.refined]).all()
        changed += int((instances.pred_masks != coarse.pred_masks).any())
    assert changed > 0
    assert refined.refinement_stats.image_sources["file_name"] == len(inputs)


def test_refiner_stays_out_of_the_detector_state_dict_and_training(dataset, sam_checkpoint, models):
    name, _ = dataset
    plain, refined, cfg, _ = models
    assert refined.state_dict().keys() == plain.state_dict().keys()
    assert not any("image_encoder" in key for key in refined.state_dict())
    # Training is the plain detector's: losses, no refiner built.
    fresh = build_model(cfg)
    fresh.train()
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[])
    batch = [mapper(copy.deepcopy(record)) for record in DatasetCatalog.get(name)]
    with EventStorage():
        losses = fresh(batch)
    assert {"loss_mask", "loss_cls", "loss_box_reg"} <= set(losses)
    assert fresh.__dict__["_refiner"] is None


def test_score_threshold_and_boxes_derived_from_masks(sam_checkpoint):
    """Mask2Former-style output (float masks, all-zero boxes): only detections above the threshold are
    refined; their zero boxes become their refined masks' boxes; float rows not refined stay as they were."""
    cls = refined_meta_arch(torch.nn.Module)
    model = cls(refinement=RefinementOptions(
        refiner=dict(type="SAMRefiner", model_type="tiny", checkpoint=sam_checkpoint, iterations=1), score_thr=0.5))
    model.register_buffer("anchor", torch.zeros(1))  # a device for the refiner
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    masks = torch.zeros(3, 60, 80)
    masks[0, 10:30, 10:40] = 1.0
    masks[1, 30:50, 40:70] = 1.0
    masks[2, 5:20, 50:75] = 0.7  # a soft row below the threshold must keep its values
    instances = Instances((60, 80), pred_masks=masks.clone(), scores=torch.tensor([0.9, 0.8, 0.1]),
                          pred_boxes=Boxes(torch.zeros(3, 4)), pred_classes=torch.zeros(3, dtype=torch.long))
    inputs = [{"image": torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1), "height": 60, "width": 80}]
    outputs = [{"instances": instances}]
    model.eval()
    model.refine_outputs(inputs, outputs)
    out = outputs[0]["instances"]
    assert out.refined.tolist()[2] is False and torch.isnan(out.refine_iou[2])
    assert torch.equal(out.pred_masks[2], masks[2])
    assert out.pred_masks.dtype == torch.float32
    for j in np.flatnonzero(out.refined.numpy()):
        ys, xs = np.nonzero(out.pred_masks[j].numpy() > 0.5)
        assert out.pred_boxes.tensor[j].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert model.refinement_stats.below_score == 1
    assert model.refinement_stats.image_sources == {"file_name": 0, "inputs": 1}
    assert "no file_name" in model.refinement_stats.fallback_reasons[0]


def test_image_rebuilt_from_the_batch_input_is_rgb_at_the_original_size():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    bgr = torch.from_numpy(rgb[:, :, ::-1].copy()).permute(2, 0, 1)
    assert np.array_equal(image_from_input(bgr, (30, 40), "BGR"), rgb)
    assert np.array_equal(image_from_input(bgr.flip(0), (30, 40), "RGB"), rgb)
    assert image_from_input(bgr.float(), (60, 80), "BGR").shape == (60, 80, 3)
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        image_from_input(bgr, (30, 40), "YUV-BT.601")


def test_evaluator_equals_the_core_and_detectron2_segm(dataset, models, tmp_path):
    name, json_file = dataset
    _, refined, cfg, _ = models
    loader = build_detection_test_loader(cfg, name)
    ours = COCOBoundaryEvaluator(name, output_dir=str(tmp_path), distributed=False)
    results = inference_on_dataset(refined, loader, ours)
    with open(tmp_path / RESULTS_FILE) as f:
        written = json.load(f)
    assert written and {r["category_id"] for r in written} <= {3, 7}  # dataset ids, not contiguous ones
    core = evaluate_coco(json_file, written, ("segm", "boundary"), progress=False)
    assert set(results) == {"segm", "boundary"}
    for iou_type in ("segm", "boundary"):
        for metric in ("AP", "AP50", "AP75"):
            assert results[iou_type][metric] == pytest.approx(core[f"{iou_type}/{metric}"] * 100, abs=1e-9)
        assert {"AP-box", "AP-ellipse"} <= set(results[iou_type])
    # Detectron2's own COCOEvaluator on the same model's predictions gives the same mask AP.
    reference = COCOEvaluator(name, tasks=("segm",), distributed=False, output_dir=str(tmp_path / "d2"),
                              use_fast_impl=False)
    d2_results = inference_on_dataset(refined, loader, reference)
    for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert results["segm"][metric] == pytest.approx(d2_results["segm"][metric], abs=1e-9, nan_ok=True)


def test_lazy_config_one_line(sam_checkpoint, tmp_path):
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
    cfg.model = with_refiner(cfg.model, refiner=dict(type="SAMRefiner", model_type="tiny", checkpoint=sam_checkpoint))
    cfg.model.backbone.bottom_up.freeze_at = 0
    path = str(tmp_path / "refined.yaml")
    LazyConfig.save(cfg, path)
    loaded = LazyConfig.load(path)
    model = instantiate(loaded.model)
    assert type(model).__name__ == "RefinedGeneralizedRCNN" and isinstance(model, GeneralizedRCNN)
    assert model.refinement.refiner["model_type"] == "tiny"


def test_clear_errors_for_misconfiguration(dataset, sam_checkpoint):
    name, _ = dataset
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "RefinedMetaArch"
    with pytest.raises(KeyError, match="add_refiner_config"):
        build_model(cfg)
    cfg = make_cfg(name, sam_checkpoint)
    cfg.MODEL.REFINER.BASE_META_ARCHITECTURE = "RefinedMetaArch"
    with pytest.raises(ValueError, match="BASE_META_ARCHITECTURE"):
        build_model(cfg)
    cfg = make_cfg(name, sam_checkpoint)
    cfg.MODEL.REFINER.IMAGE_SOURCE = "disk"
    with pytest.raises(ValueError, match="image_source"):
        build_model(cfg)
    with pytest.raises(FileNotFoundError, match="json_file"):
        MetadataCatalog.get("refine_hooks_unregistered").set(thing_classes=["a"])
        COCOBoundaryEvaluator("refine_hooks_unregistered")


def test_shipped_configs_build_refined_models(sam_checkpoint):
    cfg = get_cfg()
    add_refiner_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_file(os.path.join(REPO, "configs", "detectron2", "samrefiner.yaml"))
    assert cfg.MODEL.REFINER.MODEL_TYPE == "vit_h" and cfg.MODEL.REFINER.SAMREFINER.ITERATIONS == 5
    cfg.MODEL.DEVICE = "cpu"
    assert type(build_model(cfg)).__name__ == "RefinedGeneralizedRCNN"
    cfg.merge_from_file(os.path.join(REPO, "configs", "detectron2", "mask2former_samrefiner.yaml"))
    assert cfg.MODEL.REFINER.BASE_META_ARCHITECTURE == "MaskFormer"

    lazy = LazyConfig.load(os.path.join(REPO, "configs", "detectron2", "mask_rcnn_R_50_FPN_1x_samrefiner.py"))
    assert lazy.model.refinement.refiner.model_type == "vit_h"
    lazy = LazyConfig.apply_overrides(lazy, [f"model.refinement.refiner.checkpoint={sam_checkpoint}",
                                             "model.refinement.refiner.model_type=tiny"])
    model = instantiate(lazy.model)
    assert type(model).__name__ == "RefinedGeneralizedRCNN"
    assert model.refinement.refiner["model_type"] == "tiny"


@pytest.mark.parametrize("processes", [0, 2], ids=["one_process", "ddp_2_cpu_processes"])
def test_command_line_equals_in_process_evaluation(dataset, sam_checkpoint, models, tmp_path, processes):
    name, json_file = dataset
    _, refined, cfg, weights = models
    expected = inference_on_dataset(refined, build_detection_test_loader(cfg, name),
                                    COCOBoundaryEvaluator(name, distributed=False))
    images = os.path.join(os.path.dirname(json_file), "images")
    command = [sys.executable, os.path.join(REPO, "tools", "detectron2_test.py"),
               "--config-file", "model_zoo:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
               "--refiner-config", os.path.join(REPO, "configs", "detectron2", "samrefiner.yaml"),
               "--register", "cli_set", json_file, images, "--output", str(tmp_path), "--num-gpus", str(processes),
               "MODEL.WEIGHTS", weights, "DATASETS.TEST", "('cli_set',)"]
    for key, value in (("MODEL.ROI_HEADS.NUM_CLASSES", 2), ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0),
                       ("TEST.DETECTIONS_PER_IMAGE", 6), ("INPUT.MIN_SIZE_TEST", 128), ("INPUT.MAX_SIZE_TEST", 160),
                       ("MODEL.REFINER.MODEL_TYPE", "tiny"), ("MODEL.REFINER.CHECKPOINT", sam_checkpoint),
                       ("MODEL.REFINER.SAMREFINER.ITERATIONS", ITERATIONS)):
        command += [key, str(value)]
    # Each DDP rank (gloo on CPU) refines and predicts its own images; rank 0 gathers and evaluates.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cli_set segm: AP" in done.stdout and "refined" in done.stdout
    with open(tmp_path / "evaluation.json") as f:
        summary = json.load(f)
    assert summary["processes"] == max(processes, 1)
    got = summary["results"]["cli_set"]
    for iou_type in ("segm", "boundary"):
        for metric in ("AP", "AP50", "AP75"):
            assert got[iou_type][metric] == pytest.approx(expected[iou_type][metric], abs=1e-9)
    assert (tmp_path / "cli_set" / RESULTS_FILE).is_file()


def test_pseudo_label_hook_rounds_in_a_real_trainer(dataset, sam_checkpoint, models, tmp_path_factory, tmp_path):
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import SimpleTrainer

    from refine_hooks.detectron2 import PseudoLabelRefineHook
    from refine_hooks.jobs import JobOptions, refine_annotation_file
    from refine_hooks.jobs.rounds import detections_to_annotations
    from refine_hooks.refiners.detections import masks_to_bool

    labeled, _ = dataset
    plain, refined, cfg, _ = models
    root = str(tmp_path_factory.mktemp("d2_unlabeled"))
    info = make_tiny_coco(root, num_images=2, seed=1, prefix="unl", with_annotations=False)
    unlabeled = f"refine_hooks_unlabeled_{os.getpid()}"
    register_coco_instances(unlabeled, {}, info, os.path.join(root, "images"))
    cfg = cfg.clone()
    cfg.DATASETS.TRAIN = (labeled,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 160
    # The refined meta-architecture: the hook must take the detector's own (unrefined) predictions.
    model = copy.deepcopy(refined).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay those of `plain`
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    refiner = dict(type="SAMRefiner", model_type="tiny", checkpoint=sam_checkpoint, iterations=ITERATIONS)
    hook = PseudoLabelRefineHook(cfg, unlabeled, str(tmp_path), refiner, score_thr=0.3, period=1)
    trainer.register_hooks([hook])
    trainer.train(0, 2)

    for tag in ("iter_1", "final"):
        assert (tmp_path / tag / "pseudo_coarse.json").is_file() and (tmp_path / tag / "pseudo_refined.json").is_file()
    assert f"'{unlabeled}_pseudo_final'" in (tmp_path / "final" / "next_round.txt").read_text()
    # After the mid-training round the trainer reads the pseudo labels of the unlabeled images.
    batch = next(iter(trainer.data_loader))
    assert all(os.path.basename(record["file_name"]).startswith("unl_") for record in batch)

    # The coarse file holds exactly the plain detector's detections above the threshold.
    with open(tmp_path / "final" / "pseudo_coarse.json") as f:
        coarse = json.load(f)
    ids = {i: d for d, i in MetadataCatalog.get(unlabeled).thing_dataset_id_to_contiguous_id.items()}
    expected = []
    with torch.no_grad():
        for record in inputs_of(cfg, unlabeled):
            instances = plain([record])[0]["instances"]
            kept, _ = detections_to_annotations(masks_to_bool(instances.pred_masks), instances.scores.numpy(),
                                                instances.pred_classes.numpy(), record["image_id"],
                                                [ids[i] for i in range(len(ids))], 0.3)
            expected += kept
    assert len(expected) > 0
    key = lambda a: (a["image_id"], a["category_id"], a["segmentation"]["counts"])  # noqa: E731
    assert sorted(map(key, coarse["annotations"])) == sorted(map(key, expected))
    # The refined file is what the pseudo-label job makes of it.
    reference = tmp_path / "reference.json"
    refine_annotation_file(str(tmp_path / "final" / "pseudo_coarse.json"), os.path.join(root, "images"), str(reference),
                           options=JobOptions(model_type="tiny", checkpoint=sam_checkpoint, progress=False, workers=0,
                                              refiner_kwargs={"iterations": ITERATIONS}))
    with open(reference) as f, open(tmp_path / "final" / "pseudo_refined.json") as g:
        assert [a["segmentation"] for a in json.load(f)["annotations"]] == \
            [a["segmentation"] for a in json.load(g)["annotations"]]


def test_lvis_evaluator_on_a_registered_lvis_dataset(dataset, models, tmp_path):
    """An LVIS-format copy of the tiny set (polygons, 1-based category ids, frequencies) through
    Detectron2's LVIS loader: our evaluator maps contiguous ids back as that loader numbers them and equals
    the core LVIS evaluation of the predictions it writes."""
    from detectron2.data.datasets import register_lvis_instances

    from refine_hooks.detectron2 import LVISBoundaryEvaluator
    from refine_hooks.evaluation import evaluate_lvis
    from refine_hooks.data.masks import segmentation_to_mask

    _, json_file = dataset
    _, refined, cfg, _ = models
    with open(json_file) as f:
        coco = json.load(f)
    new_id = {3: 1, 7: 2}
    lvis = {"categories": [{"id": 1, "name": "box", "frequency": "f", "synset": "box.n.01"},
                           {"id": 2, "name": "ellipse", "frequency": "c", "synset": "ellipse.n.01"}],
            "images": [dict(image, coco_url=f"http://example.org/images/{image['file_name']}", neg_category_ids=[],
                            not_exhaustive_category_ids=[]) for image in coco["images"]],
            "annotations": []}
    sizes = {image["id"]: (image["height"], image["width"]) for image in coco["images"]}
    for annotation in coco["annotations"]:
        polygons = mask_polygons(segmentation_to_mask(annotation["segmentation"], *sizes[annotation["image_id"]]))
        lvis["annotations"].append(dict(annotation, category_id=new_id[annotation["category_id"]], segmentation=polygons))
    lvis_file = tmp_path / "lvis.json"
    lvis_file.write_text(json.dumps(lvis))
    name = f"refine_hooks_tiny_lvis_v1_{os.getpid()}"  # Detectron2 takes LVIS metadata from "v1" in the name
    register_lvis_instances(name, {}, str(lvis_file), os.path.dirname(json_file) + os.sep)
    try:
        evaluator = LVISBoundaryEvaluator(name, output_dir=str(tmp_path / "out"), distributed=False)
        results = inference_on_dataset(refined, build_detection_test_loader(cfg, name), evaluator)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    with open(tmp_path / "out" / RESULTS_FILE) as f:
        written = json.load(f)
    assert written and {r["category_id"] for r in written} <= {1, 2}
    core = evaluate_lvis(str(lvis_file), written, ("segm", "boundary"), progress=False)
    for iou_type in ("segm", "boundary"):
        assert {"APr", "APc", "APf"} <= set(results[iou_type])
        for metric in ("AP", "AP50", "APc", "APf"):
            expected = core[f"{iou_type}/{metric}"]
            got = results[iou_type][metric]
            assert (np.isnan(got) and expected < 0) or got == pytest.approx(expected * 100, abs=1e-9)


def test_default_predictor_refines_with_the_image_it_is_given(dataset, sam_checkpoint, models):
    """DefaultPredictor passes no file name: the refiner sees the input tensor (the user's image after the
    test resize) resized back to the image's size and turned to RGB."""
    from detectron2.engine import DefaultPredictor

    name, _ = dataset
    _, _, cfg, weights = models
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = weights
    predictor = DefaultPredictor(cfg)
    rgb = load_image(DatasetCatalog.get(name)[0]["file_name"])
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # DefaultPredictor takes what cv2.imread gives
    instances = predictor(bgr)["instances"]
    assert len(instances) > 0 and instances.has("refined") and instances.pred_masks.shape[1:] == rgb.shape[:2]
    stats = predictor.model.refinement_stats
    assert stats.image_sources == {"file_name": 0, "inputs": 1} and "no file_name" in stats.fallback_reasons[0]
    # The same refinement by hand: the predictor's input tensor rebuilt, the detector's masks (KEEP_UNREFINED).
    resized = predictor.aug.get_transform(bgr).apply_image(bgr)
    assert resized.shape[:2] != rgb.shape[:2]  # the test resize happened, so the rebuild is not trivial
    rebuilt = image_from_input(torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)), rgb.shape[:2], "BGR")
    refiner = build_refiner(dict(type="SAMRefiner", model_type="tiny", checkpoint=sam_checkpoint, iterations=ITERATIONS))
    coarse = instances.unrefined_masks.numpy()
    expected = refiner.refine(rebuilt, coarse)
    assert np.array_equal(instances.refined.numpy(), expected.refined)
    assert np.array_equal(instances.pred_masks.numpy(), np.where(expected.refined[:, None, None], expected.masks, coarse))


def test_pseudo_label_hook_under_ddp_equals_one_process(dataset, sam_checkpoint, models, tmp_path_factory, tmp_path):
    """Two gloo processes (Detectron2's launch, which sets no WORLD_SIZE): each rank predicts its part, the
    refinement job splits the images between the ranks, and the files equal a one-process run's."""
    _, json_file = dataset
    _, _, _, weights = models
    root = str(tmp_path_factory.mktemp("d2_unlabeled_ddp"))
    info = make_tiny_coco(root, num_images=3, seed=2, prefix="unl", with_annotations=False)
    outputs = {}
    for processes in (1, 2):
        spec = {"processes": processes, "labeled_json": json_file,
                "labeled_images": os.path.join(os.path.dirname(json_file), "images"), "unlabeled_json": info,
                "unlabeled_images": os.path.join(root, "images"), "weights": weights, "sam_checkpoint": sam_checkpoint,
                "iterations": ITERATIONS, "out_dir": str(tmp_path / f"p{processes}")}
        (tmp_path / f"spec{processes}.json").write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.pop("WORLD_SIZE", None)
        done = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "d2_ddp_worker.py"),
                               str(tmp_path / f"spec{processes}.json")], capture_output=True, text=True, env=env,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
        with open(tmp_path / f"p{processes}" / "final" / "pseudo_coarse.json") as f:
            coarse = json.load(f)
        with open(tmp_path / f"p{processes}" / "final" / "pseudo_refined.json") as f:
            refined = json.load(f)
        outputs[processes] = (coarse["annotations"], refined["annotations"])
        done_here = [json.loads((tmp_path / f"p{processes}" / f"rank{r}.json").read_text())["images_refined_here"]
                     for r in range(processes)]
        assert sum(done_here) == 3  # the ranks split the job's images: none refined twice
    assert len(outputs[1][0]) > 0
    key = lambda a: (a["image_id"], a["category_id"], a["segmentation"]["counts"])  # noqa: E731
    assert sorted(map(key, outputs[2][0])) == sorted(map(key, outputs[1][0]))
    assert sorted(map(key, outputs[2][1])) == sorted(map(key, outputs[1][1]))
    assert any(a["segmentation"] != b["segmentation"] for a, b in zip(outputs[1][0], outputs[1][1]))  # refined


def test_distance_key_reaches_the_refiner():
    """MODEL.REFINER.SAMREFINER keys come from SAMRefiner's signature: the raster distance (issue 13) too."""
    from refine_hooks.detectron2.config import refinement_options_from_config

    cfg = get_cfg()
    add_refiner_config(cfg)
    assert cfg.MODEL.REFINER.SAMREFINER.DISTANCE == "exact"
    cfg.MODEL.REFINER.SAMREFINER.DISTANCE = "raster"
    cfg.MODEL.REFINER.MODEL_TYPE = "tiny"
    refiner = build_refiner(refinement_options_from_config(cfg).refiner)
    assert refiner.distance == "raster" and refiner.config["distance"] == "raster"
