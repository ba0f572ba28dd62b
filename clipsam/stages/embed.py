"""Embed stage: one masked crop per region -> a :class:`~clipsam.models.base.RegionEmbedder` -> unit vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core import masks as M
from ..core.crops import crop_region
from ..models.base import RegionEmbedder

__all__ = ["embed_regions"]


def embed_regions(pixels: np.ndarray, rles: Sequence[M.RLE], embedder: RegionEmbedder, *, margin: float = 0.1,
                  fill: str = "grey", batch: int = 64) -> np.ndarray:
    """``(N, D) float32`` embeddings of every region's masked crop of *pixels*; crops are made batch by batch, so
    at most *batch* dense masks exist at once."""
    out = []
    for start in range(0, len(rles), batch):
        crops = [crop_region(pixels, M.decode(r), M.bbox_xywh(r), size=embedder.image_size, margin=margin, fill=fill)
                 for r in rles[start:start + batch]]
        out.append(embedder.embed_images(crops))
    if not out:
        return np.zeros((0, 1), dtype=np.float32)
    return np.concatenate(out)
