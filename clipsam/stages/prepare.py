"""Prepare stage: any image input -> RGB pixels at processing size, with the key that identifies them."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.image import ImageInput, fit_long_side, load_image, source_name
from .fullres import FullRes, supports_full_resolution

log = logging.getLogger(__name__)

__all__ = ["EmbeddingCache", "Work", "prepare"]


@dataclass(frozen=True)
class Work:
    """One image prepared for the pipeline.

    Attributes:
        original_size: ``(H, W)`` of the image as given.
        pixels: ``(h, w, 3) uint8`` at processing size (long side at most ``max_side``).
        key: content hash of the image and the processing size, for the embedding caches.
        path: the file path when the image came from one.
        image: the ``(H, W, 3) uint8`` image as given (*pixels* itself at full resolution).
        fullres: with a smaller processing size and full-resolution results, the record of how each mask is made
            again at the original size (see :mod:`clipsam.stages.fullres`); ``None``: masks are scaled up
            nearest neighbour, or need no scaling.
    """

    original_size: tuple[int, int]
    pixels: np.ndarray
    key: str
    path: str | None
    image: np.ndarray | None = field(default=None, repr=False)
    fullres: FullRes | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)``: the processing size."""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def sam(self, proposer: Any) -> Any:
        """*proposer* as the stages use it for this image: its masks remembered for full resolution when it can
        give them (see :class:`~clipsam.stages.fullres.FullRes`)."""
        return self.fullres.wrap(proposer) if self.fullres is not None else proposer

    def embeds_original(self, proposer: Any) -> bool:
        """*proposer* embeds the original image (and gives masks at the processing size and at the original's)."""
        return self.fullres is not None and supports_full_resolution(proposer)

    def input_for(self, proposer: Any) -> np.ndarray:
        """The pixels *proposer* is given: the original image when it embeds it, else the processing-size pixels."""
        return self.image if self.embeds_original(proposer) else self.pixels  # type: ignore[return-value]

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): processing pixels per original pixel."""
        return (self.pixels.shape[0] / self.original_size[0], self.pixels.shape[1] / self.original_size[1])


def prepare(image: ImageInput, max_side: int | None, full_resolution: bool = False) -> Work:
    """Load *image* (path, PIL image or array) and fit it to *max_side* (``None``: full resolution).

    *full_resolution*: results at the original size come from SAM's logits there (see
    :mod:`clipsam.stages.fullres`), not from the processing-size masks scaled up."""
    pixels = load_image(image)
    work = fit_long_side(pixels, max_side)
    key = hashlib.sha1(pixels.tobytes()).hexdigest() + f":{pixels.shape}:{work.shape}"
    path = str(image) if isinstance(image, str) or hasattr(image, "__fspath__") else None
    log.debug("image %s: %s -> processing %s", source_name(image), pixels.shape, work.shape)
    size = (int(pixels.shape[0]), int(pixels.shape[1]))
    fullres = FullRes(size) if full_resolution and work.shape[:2] != pixels.shape[:2] else None
    return Work(original_size=size, pixels=work, key=key, path=path, image=pixels, fullres=fullres)


class EmbeddingCache:
    """The proposer's image embeddings of the last *size* images, by content and by model: each image is encoded
    once per model, and every prompt, query and refinement on it reuses the embedding. Safe to share between
    threads: an image is encoded once however many threads ask (the others wait for that one encoding), and a
    thread encoding one image does not hold up threads that want another. ``hits`` and ``misses`` count lookups."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.hits = self.misses = 0
        self._items: OrderedDict[tuple[int, str], tuple[Any, Future]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, work: Work, proposer: Any) -> Any:
        # the model is part of the key (adopt() swaps it); the entry holds the model, so its id is never reused
        key = (id(proposer), work.key + (":original" if work.embeds_original(proposer) else ""))
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self.hits += 1
                self._items.move_to_end(key)
            else:
                self.misses += 1
                future: Future = Future()
                self._items[key] = (proposer, future)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        if entry is not None:
            return entry[1].result()  # waits while another thread is still encoding this image
        try:
            if work.embeds_original(proposer):  # SAM sees the image as stock SAM would; the pipeline works smaller
                emb = proposer.embed(work.image, work_size=work.shape)
            else:
                emb = proposer.embed(work.pixels)
        except BaseException as e:
            with self._lock:  # a failed encoding is not cached: the next caller tries again
                if self._items.get(key, (None, None))[1] is future:
                    del self._items[key]
            future.set_exception(e)
            raise
        future.set_result(emb)
        return emb
