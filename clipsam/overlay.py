"""Overlays people can read: regions tinted and outlined over their image, one distinct colour per category (per
region when unlabelled), prompts drawn (clicks as markers, the box as an outline), captions placed so that they
never overlap (or left out when there is no room). Pure numpy + Pillow.

:func:`render_overlay` draws a :class:`~clipsam.Segmentation`; :func:`draw_shapes` is the painter it and the HTML
report share.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .core import masks as M
from .core.image import load_image

if TYPE_CHECKING:
    from .result import Segmentation

__all__ = ["PALETTE", "Shape", "category_colour", "colour_map", "draw_shapes", "render_overlay", "shapes_of"]

#: Distinct colours (Sasha Trubetskoy's list, the greys and near-whites left out), tried first.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
)
_UNKNOWN = (160, 160, 160)
_TEXT_BG = (0, 0, 0)


@dataclass(frozen=True)
class Shape:
    """One region to draw: its mask, the key its colour comes from (a category, or ``#id`` for one region),
    its caption (``None``: none) and whether it is a part (drawn lighter, thinner)."""

    rle: M.RLE
    key: str
    caption: str | None = None
    part: bool = False


def _preferred(key: str) -> int:
    return int(hashlib.md5(key.encode("utf-8", "surrogatepass")).hexdigest(), 16) % len(PALETTE)


def _extra(k: int) -> tuple[int, int, int]:
    """Colours past the palette: hues spaced by the golden ratio."""
    r, g, b = colorsys.hsv_to_rgb((0.11 + k * 0.618034) % 1.0, 0.75 if k % 2 else 0.55, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def colour_map(keys: Iterable[str], fixed: Mapping[str, tuple[int, int, int]] | None = None
               ) -> dict[str, tuple[int, int, int]]:
    """A colour per key, all different: each key tries its own palette slot (a hash of the key, so a category
    keeps its colour across images whenever it can), then the next free one; past the palette, golden-ratio
    hues. *fixed* colours are kept (the report fixes the categories once for all images). ``unknown`` keys
    are grey."""
    out = dict(fixed or {})
    used = {c for c in out.values()}
    extra = 0
    for key in sorted(set(keys) - set(out)):
        if key.startswith("unknown"):
            out[key] = _UNKNOWN
            continue
        start = _preferred(key)
        free = next((PALETTE[(start + k) % len(PALETTE)] for k in range(len(PALETTE))
                     if PALETTE[(start + k) % len(PALETTE)] not in used), None)
        while free is None:
            candidate = _extra(extra)
            extra += 1
            free = candidate if candidate not in used else None
        out[key] = free
        used.add(free)
    return out


def category_colour(key: str | None) -> tuple[int, int, int]:
    """The colour a category gets when nothing else competes for its slot (grey for unknown / none)."""
    if not key or key.startswith("unknown"):
        return _UNKNOWN
    return PALETTE[_preferred(key)]


def shapes_of(seg: Segmentation) -> list[Shape]:
    """The regions of *seg* as shapes: labelled ones keyed by category (label path), the rest one colour each;
    captions ``label score`` for labelled regions and ``#id IoU`` for prompted masks."""
    shapes = []
    for r in seg.regions:
        part = r.kind in ("part", "unknown part")
        if r.label and r.label_path:
            key, caption = r.label_path_str, f"{r.label} {r.score:.2f}" if r.score else r.label
        elif r.label:  # free-text label without a taxonomy path
            key, caption = r.label, f"{r.label} {r.score:.2f}" if r.score else r.label
        elif r.kind == "prompt":
            key, caption = f"#{r.id}", f"#{r.id} IoU {r.predicted_iou:.2f}"
        else:
            key, caption = f"#{r.id}", None
        shapes.append(Shape(r.rle, key, caption, part))
    return shapes


def _font(size_hw: tuple[int, int]) -> Any:
    size = int(np.clip(round(min(size_hw) / 32), 10, 28))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _place_captions(draw: ImageDraw.ImageDraw, items: Sequence[tuple[str, tuple[int, int, int], M.RLE]],
                    size_hw: tuple[int, int], font: Any) -> list[tuple[int, int, int, int]]:
    """Draw captions, biggest region first, each at the first of a few spots near its region that overlaps no
    caption drawn so far; a caption with no free spot, or much larger than its region, is left out. Returns
    the rectangles drawn."""
    h, w = size_hw
    placed: list[tuple[int, int, int, int]] = []
    order = sorted(items, key=lambda t: -M.area(t[2]))
    for text, colour, rle in order:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        if M.area(rle) < tw * th / 3:
            continue  # the caption would hide its region
        x, y, bw, bh = (int(v) for v in M.bbox_xywh(rle))
        spots = [(x + 2, y + 2), (x + 2, y - th - 1), (x + 2, y + bh + 1), (x + bw - tw - 2, y + bh - th - 2),
                 (x + (bw - tw) // 2, y + (bh - th) // 2)]
        for sx, sy in spots:
            sx, sy = int(np.clip(sx, 0, max(w - tw, 0))), int(np.clip(sy, 0, max(h - th, 0)))
            rect = (sx, sy, sx + tw, sy + th)
            if any(_overlaps(rect, p) for p in placed):
                continue
            draw.rectangle(rect, fill=colour)  # the region's colour, the text black or white, whichever reads
            luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
            draw.text((sx + 2 - left, sy + 2 - top), text, fill=(0, 0, 0) if luma > 140 else (255, 255, 255),
                      font=font)
            placed.append(rect)
            break
    return placed


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def draw_shapes(image: np.ndarray, shapes: Sequence[Shape], *, colours: Mapping[str, tuple[int, int, int]] | None
                = None, prompts: Mapping[str, Any] | None = None, alpha: float = 0.5, captions: bool = True
                ) -> Image.Image:
    """*image* (``(H, W, 3)`` uint8) with *shapes* tinted and outlined (largest first, so small ones stay on top),
    *prompts* drawn (``points`` / ``labels``: green foreground and red background markers; ``box``: an
    outline), and non-overlapping captions."""
    rgb = np.asarray(image, dtype=np.float32).copy()
    h, w = rgb.shape[:2]
    colours = dict(colours or {})
    missing = [s.key for s in shapes if s.key not in colours]
    if missing:
        colours = colour_map(missing, colours)
    line = max(1, round(min(h, w) / 320))
    order = sorted(range(len(shapes)), key=lambda i: -M.area(shapes[i].rle))
    for i in order:
        s = shapes[i]
        if M.area(s.rle) == 0:
            continue
        x, y, bw, bh = (int(v) for v in M.bbox_xywh(s.rle))
        y0, x0, y1, x1 = max(y - line, 0), max(x - line, 0), min(y + bh + line, h), min(x + bw + line, w)
        mask = M.decode(s.rle)[y0:y1, x0:x1]
        colour = np.asarray(colours[s.key], dtype=np.float32)
        a = alpha * (0.6 if s.part else 1.0)
        crop = rgb[y0:y1, x0:x1]
        crop[mask] = crop[mask] * (1 - a) + colour * a
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        edge = mask & ~inner
        if not s.part and line > 1:
            edge = _dilate(edge, line - 1) & _dilate(mask, line - 1)
        crop[edge] = colour
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = _font((h, w))
    if captions:
        items = [(s.caption, colours[s.key], s.rle) for s in shapes if s.caption]
        _place_captions(draw, items, (h, w), font)
        if not shapes:
            draw.rectangle((0, 0, *draw.textbbox((4, 4), "no regions", font=font)[2:]), fill=_TEXT_BG)
            draw.text((4, 4), "no regions", fill=(255, 255, 255), font=font)
    _draw_prompts(draw, prompts or {}, (h, w))
    return out


def _draw_prompts(draw: ImageDraw.ImageDraw, prompts: Mapping[str, Any], size_hw: tuple[int, int]) -> None:
    h, w = size_hw
    width = max(2, round(min(h, w) / 250))
    box = prompts.get("box")
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0), width=width + 2)
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=width)
    points = prompts.get("points") or []
    labels = prompts.get("labels") or [1] * len(points)
    r = max(4.0, min(h, w) / 60)
    for (px, py), label in zip(points, labels, strict=False):
        fill = (40, 220, 60) if int(label) == 1 else (235, 40, 40)
        draw.ellipse((px - r, py - r, px + r, py + r), fill=fill, outline=(255, 255, 255), width=width)
        if int(label) != 1:  # a background click also reads without colour: a bar across it
            draw.line((px - r * 0.6, py, px + r * 0.6, py), fill=(255, 255, 255), width=width)


def render_overlay(seg: Segmentation, image: Any, *, alpha: float = 0.5, draw_labels: bool = True,
                   colours: Mapping[str, tuple[int, int, int]] | None = None) -> Image.Image:
    """An RGB ``PIL.Image`` of *image* with every region of *seg* tinted and outlined, its prompts drawn."""
    if image is None:
        raise ValueError("the overlay needs the image: pass image=... (the segmentation has no image_path)")
    rgb = load_image(image)
    if tuple(rgb.shape[:2]) != tuple(seg.image_size):
        raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but the segmentation is for "
                         f"{seg.image_size[1]}x{seg.image_size[0]}")
    return draw_shapes(rgb, shapes_of(seg), colours=colours, prompts=seg.prompts, alpha=alpha,
                       captions=draw_labels)
