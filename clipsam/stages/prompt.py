"""Prompt stage: points, labels and boxes checked against the image, before SAM sees them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PromptError

__all__ = ["predict_prompt", "validate_prompts"]


def validate_prompts(points: Any, labels: Any, box: Any, size_hw: tuple[int, int]):
    """``(points (N, 2), labels (N,), box (4,))`` as float/int arrays (``None`` where not given), or a
    :class:`~clipsam.errors.PromptError` naming what does not fit the ``(H, W)`` image *size_hw*."""
    h, w = size_hw
    pts = lbls = bx = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1 and pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise PromptError(f"points must be (N, 2) pixel coordinates (x, y), got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise PromptError("points contain NaN or infinity")
        outside = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
        if outside.any():
            raise PromptError(f"point(s) {pts[outside].tolist()} lie outside the {w}x{h} image")
        lbls = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
        if len(lbls) != len(pts):
            raise PromptError(f"{len(pts)} points but {len(lbls)} labels: give one label (1 or 0) per point")
        if not np.isin(lbls, (0, 1)).all():
            raise PromptError(f"point labels must be 1 (foreground) or 0 (background), got {lbls.tolist()}")
        lbls = lbls.astype(np.int64)
    elif labels is not None:
        raise PromptError("labels= given without points=")
    if box is not None:
        bx = np.asarray(box, dtype=np.float64).reshape(-1)
        if bx.shape != (4,) or not np.isfinite(bx).all():
            raise PromptError(f"box must be 4 numbers (x0, y0, x1, y1), got {np.asarray(box).tolist()}")
        if not (bx[0] < bx[2] and bx[1] < bx[3]):
            raise PromptError(f"box {bx.tolist()} must have x0 < x1 and y0 < y1")
        if bx[2] <= 0 or bx[3] <= 0 or bx[0] >= w or bx[1] >= h:
            raise PromptError(f"box {bx.tolist()} lies outside the {w}x{h} image")
        bx = np.clip(bx, 0, [w, h, w, h])
    return pts, lbls, bx


def predict_prompt(proposer: Any, embedding: Any, work: Any, points: np.ndarray | None, labels: np.ndarray | None,
                   box: np.ndarray | None, *, mask: Any = None, multimask: bool | None = None) -> Any:
    """SAM's masks (processing size) for validated prompts in original-image pixels.

    *multimask* ``None``: 3 masks for a single click with nothing else, else 1, as SAM's authors recommend."""
    if points is None and box is None and mask is None:
        raise PromptError("segment_prompt needs at least one of points=, box= or mask=")
    if multimask is None:
        multimask = points is not None and len(points) == 1 and box is None and mask is None
    if work.embeds_original(proposer):  # SAM embedded the original: the prompts go in as given, as to stock SAM
        return proposer.predict(embedding, point_coords=points, point_labels=labels, box=box, mask_input=mask,
                                multimask_output=bool(multimask), frame="image")
    sy, sx = work.scale
    scale = np.asarray([sx, sy], dtype=np.float64)
    return proposer.predict(embedding, point_coords=None if points is None else points * scale, point_labels=labels,
                            box=None if box is None else box * np.concatenate([scale, scale]), mask_input=mask,
                            multimask_output=bool(multimask))
