"""Full-resolution masks: the pipeline works at the processing size, the result is at the original image's.

A proposer with ``full_resolution`` (SAM 1, SAM 2.1) embeds the *original* image, as stock SAM does, and works at the
processing size for the pipeline's cheap stages (nesting, crops, labels). :class:`FullRes` remembers, for every mask
such a proposer gives during one call, how to make it again at the original size from SAM's own logits:

* the automatic generator hands the full-resolution mask over with each proposal (``Proposal.full_rle``, stock's
  mask: it is made there and thresholded there, as ``SamAutomaticMaskGenerator`` does);
* a prompted mask keeps its low-resolution logits (within :data:`LOGIT_BUDGET` bytes) or, past that budget, the
  prompt that made it, decoded again when the mask is kept.

:meth:`FullRes.full` then gives a kept region's mask by bilinear upsampling of those logits to the original size
(stock ``SamPredictor``'s masks), and falls back to nearest-neighbour scaling only for masks no proposer made (SAM 3's,
or a custom proposer's).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core import masks as M
from ..models.base import PromptMasks, Proposal

log = logging.getLogger(__name__)

__all__ = ["LOGIT_BUDGET", "FullRes", "supports_full_resolution"]

#: Bytes of low-resolution logits a call keeps (256x256 float32 = 256 KiB a mask: about 1,000 masks); past it, the
#: prompts are kept and decoded again for the masks that are kept.
LOGIT_BUDGET = 256 * 1024 * 1024


def supports_full_resolution(proposer: Any) -> bool:
    """*proposer* embeds the original image and gives its masks there (``full_resolution`` and ``upscale``)."""
    return bool(getattr(proposer, "full_resolution", False)) and callable(getattr(proposer, "upscale", None))


def _key(rle: M.RLE) -> tuple[Any, ...]:
    return (*rle["size"], rle["counts"])


class FullRes:
    """Where each mask of one call came from, so that :func:`~clipsam.stages.assemble.assemble` can give it at
    *original_size*."""

    def __init__(self, original_size: tuple[int, int], budget: int = LOGIT_BUDGET) -> None:
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.budget = budget
        self._held = 0
        self._sources: dict[tuple[Any, ...], Any] = {}
        self.upsampled = self.redecoded = self.nearest = 0

    def wrap(self, proposer: Any) -> Any:
        """*proposer* as seen by the stages: the same calls, each mask remembered (see :class:`_Recording`)."""
        return _Recording(proposer, self) if supports_full_resolution(proposer) else proposer

    # -- recording ---------------------------------------------------------------------------------------------------
    def add_full(self, rle: M.RLE, full: M.RLE) -> None:
        self._sources.setdefault(_key(rle), ("rle", full))

    def add_prompt(self, proposer: Any, embedding: Any, kwargs: dict[str, Any], out: PromptMasks) -> None:
        for j, mask in enumerate(out.masks):
            key = _key(M.encode(mask))  # type: ignore[arg-type]
            if key in self._sources:
                continue
            logits = (out.upscale_logits if out.upscale_logits is not None else out.low_res_logits)[j]
            if self._held + logits.nbytes <= self.budget:
                self._held += logits.nbytes
                self._sources[key] = ("logits", proposer, embedding, logits.copy())
            else:  # the prompt: decoded again if this mask is kept
                self._sources[key] = ("prompt", proposer, embedding, kwargs, j)

    # -- resolving ---------------------------------------------------------------------------------------------------
    def full(self, rle: M.RLE) -> M.RLE:
        """*rle* (processing size) at the original size: from SAM's logits where a proposer made it, else scaled
        nearest neighbour."""
        if tuple(rle["size"]) == self.original_size:
            return rle
        src = self._sources.get(_key(rle))
        if src is None:
            self.nearest += 1
            return M.resize(rle, self.original_size)
        if src[0] == "rle":
            return src[1]
        if src[0] == "logits":
            _, proposer, emb, logits = src
            self.upsampled += 1
        else:
            _, proposer, emb, kwargs, j = src
            again = proposer.predict(emb, **kwargs)
            logits = (again.upscale_logits if again.upscale_logits is not None else again.low_res_logits)[j]
            self.redecoded += 1
        return proposer.upscale(emb, logits[None])[0]

    def many(self, rles: Sequence[M.RLE]) -> list[M.RLE]:
        out = [self.full(r) for r in rles]
        if self.nearest:
            log.debug("%d of %d masks scaled nearest neighbour (no proposer logits for them)", self.nearest, len(rles))
        return out


class _Recording:
    """A full-resolution proposer whose every mask a :class:`FullRes` remembers; everything else passes through."""

    def __init__(self, proposer: Any, store: FullRes) -> None:
        self._proposer, self._store = proposer, store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proposer, name)

    def predict(self, embedding: Any, **kwargs: Any) -> PromptMasks:
        out = self._proposer.predict(embedding, **kwargs)
        self._store.add_prompt(self._proposer, embedding, kwargs, out)
        return out

    def generate(self, image: np.ndarray, embedding: Any = None, **params: Any) -> list[Proposal]:
        props = self._proposer.generate(image, embedding, **params)
        for p in props:
            if p.full_rle is not None:
                self._store.add_full(p.rle, p.full_rle)
        return props
