"""The frozen encoder's image embeddings, computed once and kept on disk (optional).

The encoder is frozen during refiner training, so an image's embedding never changes; with the cache an
epoch costs the decoder's work only. One fp16 file per (SAM, image content): the key is the SAM's
fingerprint (:func:`refine_hooks.sam.refiner_weights.sam_fingerprint`) and the sha256 of the decoded,
flipped pixels, so a changed image or model is encoded again and never read stale. Files are written
atomically (a crash never leaves a partial file under a valid name).

Training always uses embeddings rounded to fp16, cached or not (Phoenix trains in fp16), so turning the
cache on changes nothing but speed. Colour jitter changes the pixels, hence the embedding: with the cache
it is off (the trainer logs so); flips are cached as their own images.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import numpy as np
import torch

from ...sam.engine import ImageEmbedding, SamEngine, resized_shape


def image_key(image: np.ndarray) -> str:
    """sha256 of a uint8 ``H x W x 3`` image's shape and pixels."""
    digest = hashlib.sha256(f"{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """fp16 embeddings under ``root/<fingerprint[:16]>/<key[:2]>/<key>.pt``.

    Args:
        root: cache directory (created when missing).
        fingerprint: the SAM's fingerprint.
    """

    def __init__(self, root: str, fingerprint: str):
        self.root = os.path.join(root, fingerprint[:16])
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key + ".pt")

    def load(self, key: str) -> Optional[torch.Tensor]:
        path = self.path(key)
        if not os.path.isfile(path):
            return None
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged file is re-encoded and rewritten
            return None
        return features if torch.is_tensor(features) and features.dtype == torch.float16 else None

    def save(self, key: str, features: torch.Tensor) -> None:
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(features.detach().to("cpu", torch.float16).contiguous(), tmp)
        os.replace(tmp, path)


def encode_for_training(engine: SamEngine, image: np.ndarray, cache: Optional[EmbeddingCache]) -> ImageEmbedding:
    """The embedding of one image as training uses it: fp16-rounded, float32 on the engine's device,
    from the cache when it holds it (then the encoder does not run)."""
    key = image_key(image) if cache is not None else None
    features = cache.load(key) if cache is not None else None
    if features is None:
        features = engine.encode([image])[0].features.to(torch.float16)
        if cache is not None:
            cache.save(key, features)
            cache.misses += 1
    elif cache is not None:
        cache.hits += 1
    height, width = image.shape[:2]
    return ImageEmbedding(features=features.to(engine.device, torch.float32), original_size=(height, width),
                          input_size=resized_shape(height, width, engine.image_size))
