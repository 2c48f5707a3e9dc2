"""refine_hooks.files.not_a_checkpoint: every way torch and Detectron2 write weights passes, what cannot be
weights is named."""

import pickle

import pytest
import torch

from refine_hooks.files import not_a_checkpoint


def test_every_checkpoint_format_passes(tmp_path):
    state = {"state_dict": {"w": torch.ones(3)}, "meta": {"epoch": 1}}
    torch.save(state, tmp_path / "zip.pth")  # torch >= 1.6
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):  # Detectron2's .pkl weights
        with open(tmp_path / f"weights_{protocol}.pkl", "wb") as handle:
            pickle.dump({"model": {"w": [1.0]}}, handle, protocol=protocol)
    for path in sorted(tmp_path.iterdir()):
        assert not_a_checkpoint(path) is None, path.name


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"model_final.pkl: 404 Not Found\n", "neither a PyTorch archive nor a pickle"),
    (None, "truncated"),
])
def test_what_cannot_be_weights_is_named(tmp_path, content, reason):
    path = tmp_path / "weights.pth"
    if content is None:  # the first half of a real checkpoint
        torch.save({"w": torch.ones(1000)}, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    assert reason in not_a_checkpoint(path)
