import hashlib

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from refine_hooks.sam import (
    CheckpointUnavailableError,
    ModelSpec,
    SamEngine,
    build_sam_model,
    build_tiny_sam,
    ensure_checkpoint,
    get_spec,
    save_tiny_checkpoint,
)
from refine_hooks.sam.build import TinySamConfig


def _prompts():
    coords = torch.tensor([[[20.0, 30.0], [60.0, 10.0]], [[90.0, 70.0], [5.0, 5.0]], [[40.0, 40.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, 0], [1, -1]])
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 50.0, 110.0, 85.0], [20.0, 20.0, 60.0, 60.0]])
    return coords, labels, boxes


def test_decoder_matches_segment_anything_predictor(tiny_sam, scene):
    image, _ = scene
    engine = SamEngine(tiny_sam, decoder_chunk_size=2)
    embedding = engine.encode([image])[0]
    coords, labels, boxes = _prompts()
    mask_inputs = torch.randn(3, 1, *engine.mask_input_size, generator=torch.Generator().manual_seed(0))
    logits, ious = engine.decode(embedding, point_coords=coords, point_labels=labels, boxes=boxes, mask_inputs=mask_inputs)

    predictor = SamPredictor(tiny_sam)
    # Same encoder input as ours, so the comparison isolates prompt handling and decoding.
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(pixels, embedding.input_size, mode="bilinear", align_corners=False, antialias=True)
    predictor.set_torch_image(resized, image.shape[:2])
    transform = ResizeLongestSide(engine.image_size)
    _, ref_ious, ref_logits = predictor.predict_torch(
        transform.apply_coords_torch(coords, image.shape[:2]),
        labels,
        transform.apply_boxes_torch(boxes, image.shape[:2]),
        mask_inputs,
        multimask_output=True,
    )
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ious, ref_ious, rtol=1e-4, atol=1e-4)
    # Upsampling matches Sam.postprocess_masks.
    reference_full = tiny_sam.postprocess_masks(ref_logits, embedding.input_size, image.shape[:2])
    torch.testing.assert_close(engine.upsample_logits(logits[:, 0], embedding), reference_full[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [1, 2, 64])
@pytest.mark.parametrize("batch_invariant", [True, False])
def test_decoding_in_chunks_equals_one_call(tiny_sam, scene, chunk, batch_invariant):
    image, _ = scene
    coords, labels, boxes = _prompts()
    mask_inputs = 30 * torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    prompts = dict(point_coords=coords, point_labels=labels, boxes=boxes, mask_inputs=mask_inputs)
    whole = SamEngine(tiny_sam, decoder_chunk_size=64, batch_invariant=batch_invariant)
    embedding = whole.encode([image])[0]
    expected = whole.decode(embedding, **prompts)
    got = SamEngine(tiny_sam, decoder_chunk_size=chunk, batch_invariant=batch_invariant).decode(embedding, **prompts)
    alone = [SamEngine(tiny_sam).decode(embedding, **{k: v[i : i + 1] for k, v in prompts.items()}) for i in range(3)]
    alone = [torch.cat(parts) for parts in zip(*alone)]
    for a, b, c in zip(got, expected, alone):
        # Batched CPU kernels round differently with the batch size (the mask convolution most).
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
        if batch_invariant:  # bit for bit, whatever the batch
            assert torch.equal(a, b) and torch.equal(a, c)


def test_batch_invariance_is_the_cpu_default(tiny_sam):
    assert SamEngine(tiny_sam).prompts_per_call == 1
    assert SamEngine(tiny_sam, batch_invariant=False, decoder_chunk_size=8).prompts_per_call == 8


def test_encoding_is_deterministic_and_batch_independent(tiny_sam, scene):
    image, _ = scene
    engine = SamEngine(tiny_sam)
    other = np.ascontiguousarray(image[::-1])
    alone = engine.encode([image])[0].features
    together = engine.encode([other, image], batch_size=2)[1].features
    assert torch.equal(alone, engine.encode([image])[0].features)
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


def test_bf16_encoder_runs_on_cpu(tiny_sam, scene):
    image, _ = scene
    embedding = SamEngine(tiny_sam, precision="bf16").encode([image])[0]
    assert embedding.features.dtype == torch.float32 and torch.isfinite(embedding.features).all()
    with pytest.raises(ValueError, match="precision"):
        SamEngine(tiny_sam, precision="int8")


def test_tiny_checkpoint_round_trip(tmp_path, caplog):
    config = TinySamConfig(image_size=128)
    path = save_tiny_checkpoint(tmp_path / "tiny.pth", config, seed=3)
    loaded = build_sam_model("vit_b", path)  # the file's own architecture wins, and the log says so
    assert any("tiny random SAM" in r.getMessage() and "vit_b" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    caplog.clear()
    build_sam_model("tiny", path)
    assert not caplog.records
    reference = build_tiny_sam(config, seed=3)
    assert loaded.image_encoder.img_size == 128
    for (name, a), (_, b) in zip(loaded.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_official_checkpoint_with_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    with pytest.raises(ValueError, match="does not fit model type vit_b") as raised:
        build_sam_model("vit_b", path)
    assert "\n" not in str(raised.value) and "weights.pth" in str(raised.value)
    # a checkpoint of another official model says which one it looks like (the encoder's width)
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16)}, path)
    with pytest.raises(ValueError, match="looks like a vit_h checkpoint"):
        build_sam_model("vit_b", path)
    for name, data in (("garbage.pth", b"not a checkpoint" * 10), ("empty.pth", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"checkpoint .*{name} cannot be read as PyTorch weights") as raised:
            build_sam_model("vit_b", tmp_path / name)
        assert "\n" not in str(raised.value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_sam_model("vit_b", tmp_path / "missing.pth")


def test_registry_has_official_urls():
    for name, md5_prefix in (("vit_b", "01ec64"), ("vit_l", "0b3195"), ("vit_h", "4b8939")):
        spec = get_spec(name)
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
        assert spec.filename == f"sam_{name}_{md5_prefix}.pth" and spec.md5.startswith(md5_prefix)
    with pytest.raises(KeyError, match="known"):
        get_spec("vit_x")


def test_cached_checkpoint_is_verified_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINE_HOOKS_CACHE", str(tmp_path))
    payload = b"pretend checkpoint bytes"
    spec = ModelSpec("fake", "sam", "vit_b", "http://127.0.0.1:9/fake_model.pth", hashlib.md5(payload).hexdigest())
    target = tmp_path / "checkpoints" / "fake_model.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(payload)
    assert ensure_checkpoint(spec) == target
    assert target.with_suffix(".pth.md5ok").exists()
    bad = ModelSpec("fake", "sam", "vit_b", spec.url, "0" * 32)
    target.with_suffix(".pth.md5ok").unlink()
    with pytest.raises(ValueError, match="md5"):
        ensure_checkpoint(bad)


def test_offline_download_names_the_file_and_the_place(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINE_HOOKS_CACHE", str(tmp_path))
    # Port 9 on loopback refuses connections: the same failure as an offline machine, without any network.
    spec = ModelSpec("fake", "sam", "vit_b", "http://127.0.0.1:9/sam_fake.pth", "0" * 32)
    with pytest.raises(CheckpointUnavailableError) as error:
        ensure_checkpoint(spec)
    message = str(error.value)
    assert "http://127.0.0.1:9/sam_fake.pth" in message
    assert str(tmp_path / "checkpoints" / "sam_fake.pth") in message
    assert "--checkpoint" in message
    assert not list((tmp_path / "checkpoints").glob("*.part"))
    with pytest.raises(CheckpointUnavailableError, match="disabled"):
        ensure_checkpoint(get_spec("vit_h"), download=False)
