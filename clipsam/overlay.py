"""Overlays: regions drawn over their image, coloured by top-level category. Pure numpy + Pillow."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .core import masks as M
from .core.image import load_image

if TYPE_CHECKING:
    from .result import Segmentation

__all__ = ["category_colour", "render_overlay"]

_PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
], dtype=np.uint8)
_UNKNOWN = (160, 160, 160)


def category_colour(key: str | None) -> tuple[int, int, int]:
    """A stable colour for a top-level category name (grey for unknown / unlabelled)."""
    if not key or key.startswith("unknown"):
        return _UNKNOWN
    idx = int(hashlib.md5(key.encode()).hexdigest(), 16) % len(_PALETTE)
    return tuple(int(c) for c in _PALETTE[idx])  # type: ignore[return-value]


def _boundary(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_overlay(seg: Segmentation, image: Any, *, alpha: float = 0.5, draw_labels: bool = True) -> Image.Image:
    """An RGB ``PIL.Image`` of *image* with every region of *seg* tinted and outlined, largest first."""
    if image is None:
        raise ValueError("the overlay needs the image: pass image=... (the segmentation has no image_path)")
    rgb = load_image(image).astype(np.float32)
    if tuple(rgb.shape[:2]) != tuple(seg.image_size):
        raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but the segmentation is for "
                         f"{seg.image_size[1]}x{seg.image_size[0]}")
    by_id = {r.id: r for r in seg.regions}

    def top_key(r: Any) -> str | None:
        node = r
        while node.kind in ("part", "unknown part") and node.parent_id in by_id:
            node = by_id[node.parent_id]
        return node.label_path[0] if node.label_path else node.label

    labels = []
    for r in sorted(seg.regions, key=lambda r: -r.area):
        mask = M.decode(r.rle)
        colour = np.asarray(category_colour(top_key(r)), dtype=np.float32)
        a = alpha * (0.6 if r.kind in ("part", "unknown part") else 1.0)
        rgb[mask] = rgb[mask] * (1 - a) + colour * a
        rgb[_boundary(mask)] = colour
        if draw_labels and r.label:
            labels.append((r, tuple(int(c) for c in colour)))
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if labels:
        draw = ImageDraw.Draw(out)
        font = ImageFont.load_default()
        for r, colour in labels:
            x, y = r.bbox_xywh[:2]
            text = f"{r.label} {r.score:.2f}" if r.score else str(r.label)
            tb = draw.textbbox((x + 2, y + 2), text, font=font)
            draw.rectangle(tb, fill=(0, 0, 0))
            draw.text((x + 2, y + 2), text, fill=colour, font=font)
    return out
