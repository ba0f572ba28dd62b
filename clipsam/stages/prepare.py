"""Prepare stage: any image input -> RGB pixels at processing size, with the key that identifies them."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.image import ImageInput, fit_long_side, load_image, source_name

log = logging.getLogger(__name__)

__all__ = ["EmbeddingCache", "Work", "prepare"]


@dataclass(frozen=True)
class Work:
    """One image prepared for the pipeline.

    Attributes:
        original_size: ``(H, W)`` of the image as given.
        pixels: ``(h, w, 3) uint8`` at processing size (long side at most ``max_side``).
        key: content hash of *pixels*, for the embedding cache.
        path: the file path when the image came from one.
    """

    original_size: tuple[int, int]
    pixels: np.ndarray
    key: str
    path: str | None

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): processing pixels per original pixel."""
        return (self.pixels.shape[0] / self.original_size[0], self.pixels.shape[1] / self.original_size[1])


def prepare(image: ImageInput, max_side: int | None) -> Work:
    """Load *image* (path, PIL image or array) and fit it to *max_side* (``None``: full resolution)."""
    pixels = load_image(image)
    work = fit_long_side(pixels, max_side)
    key = hashlib.sha1(work.tobytes()).hexdigest() + f":{work.shape}"
    path = str(image) if isinstance(image, str) or hasattr(image, "__fspath__") else None
    log.debug("image %s: %s -> processing %s", source_name(image), pixels.shape, work.shape)
    return Work(original_size=(int(pixels.shape[0]), int(pixels.shape[1])), pixels=work, key=key, path=path)


class EmbeddingCache:
    """The proposer's image embeddings of the last *size* images, by content: each image is encoded once, and
    every prompt, query and refinement on it reuses the embedding."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, work: Work, proposer: Any) -> Any:
        if work.key in self._items:
            self._items.move_to_end(work.key)
            return self._items[work.key]
        emb = proposer.embed(work.pixels)
        self._items[work.key] = emb
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return emb
