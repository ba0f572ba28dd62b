"""HTML reports to look at: one self-contained page (inline CSS, JS and images; no server, no CDN, no network).

A report shows each image as a thumbnail with its overlay, and beside it the image's collapsible part–whole tree
(label, label path, score, kind, area). Hovering a tree node highlights its mask and the reverse; a link
``report.html#r-<image>-<region>`` opens the page with that region selected. Below: regions per category,
the images that could not be processed and why, and the run's parameters.

:func:`label_report` builds it for a ``clipsam label`` output folder, :func:`segmentation_report` for one
:class:`~clipsam.Segmentation`; :func:`write_report` writes either atomically. Pure numpy + Pillow.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ._version import __version__
from .core import masks as M
from .core.polygons import mask_rings
from .errors import ClipsamError
from .files import read_text_capped
from .overlay import Shape, colour_map, draw_shapes

if TYPE_CHECKING:
    from .result import Segmentation

__all__ = ["ReportImage", "ReportRegion", "label_report", "render_report", "segmentation_report", "write_report"]

#: Long side of the thumbnails, in pixels.
THUMB_SIDE = 640
#: Tree levels shown unfolded (deeper ones open on a click, or when a link selects a region inside them).
OPEN_DEPTH = 1


@dataclass(frozen=True)
class ReportRegion:
    """One node of an image's tree: ``id`` unique within the image, ``parent`` its parent's id."""

    id: int
    parent: int | None
    label: str | None
    path: str
    score: float
    kind: str
    area: int
    rle: M.RLE
    category: str = ""

    @property
    def key(self) -> str:
        """The colour key: the category (label path) when labelled, else this region alone."""
        if self.path:
            return self.path
        return self.kind if self.kind.startswith("unknown") else f"#{self.id}"


@dataclass
class ReportImage:
    """One image of a report: a name, its ``(H, W)``, its regions, and the picture (an array, a path, or
    ``None`` when it cannot be found: the tree is shown without a thumbnail)."""

    name: str
    size: tuple[int, int]
    regions: list[ReportRegion]
    image: Any = None
    prompts: Mapping[str, Any] = field(default_factory=dict)


def _text(value: Any) -> str:
    """*value* as HTML-safe text; file names that are not valid UTF-8 show replacement characters."""
    s = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(s, quote=True)


def regions_of_segmentation(seg: Segmentation) -> list[ReportRegion]:
    return [ReportRegion(r.id, r.parent_id, r.label, r.label_path_str, float(r.score), r.kind, int(r.area), r.rle,
                         r.label_path_str or r.kind) for r in seg.regions]


def regions_of_coco(annotations: Sequence[Mapping[str, Any]], categories: Mapping[int, Mapping[str, Any]]
                    ) -> list[ReportRegion]:
    """Report regions of one image's COCO annotations (ids are annotation ids; paths from ``label_path``)."""
    from .export import path_tuple

    out = []
    for a in annotations:
        cat = categories.get(a.get("category_id"), {})
        path = "/".join(path_tuple(a.get("label_path"))) or ("" if str(a.get("kind", "")).startswith("unknown")
                                                              else str(cat.get("label_path", "")))
        label = path.rsplit("/", 1)[-1] if path else None
        out.append(ReportRegion(int(a["id"]), a.get("parent_id"), label, path, float(a.get("score", 0.0)),
                                str(a.get("kind") or "object"), int(a.get("area", 0)), a["segmentation"],
                                str(cat.get("name") or a.get("kind") or "")))
    return out


def _thumbnail(image: Any, size: tuple[int, int], side: int) -> tuple[np.ndarray, float] | None:
    from .core.image import load_image

    try:
        rgb = load_image(image)
    except Exception:  # a moved or unreadable image: the report still shows its tree
        return None
    if tuple(rgb.shape[:2]) != tuple(size):
        return None
    scale = min(1.0, side / max(size))
    if max(size) * 2 <= side:  # small images are enlarged (whole pixels, no blur) so their captions can be read
        scale = float(side // max(size))
    if scale != 1.0:
        th, tw = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
        rgb = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.LANCZOS if scale < 1 else Image.NEAREST))
    return rgb, scale


def _svg_path(rle: M.RLE, scale: float) -> str:
    rings = mask_rings(rle, tolerance=max(0.5, 0.6 / scale) if scale < 1 else 0.5)
    parts = []
    for xy, _ in rings:
        pts = xy * scale
        parts.append("M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in pts) + "Z")
    return "".join(parts)


def _tree_html(k: int, regions: Sequence[ReportRegion], colours: Mapping[str, tuple[int, int, int]]) -> str:
    ids = {r.id for r in regions}
    kids: dict[int | None, list[ReportRegion]] = {}
    for r in regions:
        kids.setdefault(r.parent if r.parent in ids else None, []).append(r)

    def node(r: ReportRegion, depth: int) -> str:
        c = colours.get(r.key, (160, 160, 160))
        label = _text(r.label or ("unknown" if r.kind.startswith("unknown") else "(unlabelled)"))
        body = (f'<span class="sw" style="background:rgb{c}"></span><b>{label}</b> '
                f'<span class="path">{_text(r.path or r.kind)}</span> <span class="score">{r.score:.2f}</span> '
                f'<span class="kind">{_text(r.kind)}</span> <span class="area">{r.area:,} px</span>')
        key = f"{k}-{r.id}"
        sub = kids.get(r.id, [])
        if not sub:
            return f'<li><div class="node" data-r="{key}" id="r-{key}">{body}</div></li>'
        inner = "".join(node(s, depth + 1) for s in sub)
        return (f'<li><details{" open" if depth < OPEN_DEPTH else ""}><summary class="node" data-r="{key}" '
                f'id="r-{key}">{body}</summary><ul>{inner}</ul></details></li>')

    roots = kids.get(None, [])
    return (f'<ul class="tree">{"".join(node(r, 0) for r in roots)}</ul>' if roots
            else '<p class="none">no regions</p>')


def _image_html(k: int, item: ReportImage, fixed: Mapping[str, tuple[int, int, int]], side: int) -> str:
    colours = colour_map([r.key for r in item.regions], fixed)
    thumb = _thumbnail(item.image, item.size, side) if item.image is not None else None
    if thumb is None:
        view = f'<div class="missing">image not found: {_text(item.name)}</div>'
    else:
        rgb, scale = thumb
        th, tw = rgb.shape[:2]
        small = [Shape(M.resize(r.rle, (th, tw)) if scale != 1.0 else r.rle, r.key,
                       f"{r.label} {r.score:.2f}" if r.label else None, r.kind in ("part", "unknown part"))
                 for r in item.regions]
        prompts = {k2: (np.asarray(v, dtype=np.float64) * scale).tolist() if k2 in ("points", "box") else v
                   for k2, v in dict(item.prompts).items()}
        picture = draw_shapes(rgb, small, colours=colours, prompts=prompts)
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=88)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        order = sorted(item.regions, key=lambda r: -r.area)  # small masks on top, so they can be hovered
        paths = "".join(f'<path data-r="{k}-{r.id}" d="{_svg_path(r.rle, scale)}"/>' for r in order if r.area)
        view = (f'<div class="view" style="width:{tw}px"><img alt="{_text(item.name)}" width="{tw}" height="{th}" '
                f'src="data:image/jpeg;base64,{data}"><svg viewBox="0 0 {tw} {th}" width="{tw}" height="{th}">'
                f"{paths}</svg></div>")
    h, w = item.size
    return (f'<section class="image" id="img-{k}"><h2>{_text(item.name)} <small>{w}×{h}, '
            f"{len(item.regions)} regions</small></h2><div class=\"row\">{view}"
            f"{_tree_html(k, item.regions, colours)}</div></section>")


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:0 24px 48px;color:#222;
background:#fafafa}
header{padding:16px 0;border-bottom:1px solid #ddd;margin-bottom:8px}h1{font-size:22px;margin:0 0 4px}
.meta{color:#555}.image{background:#fff;border:1px solid #e3e3e3;border-radius:6px;margin:16px 0;padding:8px 16px}
h2{font-size:16px;margin:6px 0 10px;word-break:break-all}h2 small{color:#777;font-weight:normal}
.row{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}.view{position:relative;flex:none}
.view img{display:block}.view svg{position:absolute;left:0;top:0}
.view path{fill:transparent;stroke:transparent;fill-rule:evenodd;cursor:pointer}
.view path.hl,.view path.sel{fill:rgba(255,255,255,.45);stroke:#fff;stroke-width:2;vector-effect:non-scaling-stroke}
.tree,.tree ul{list-style:none;margin:0;padding-left:16px}.tree{padding-left:0;min-width:320px;flex:1}
.node{padding:1px 4px;border-radius:3px;cursor:default}.node.hl,.node.sel{background:#ffe98a}
summary.node{cursor:pointer}.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.path{color:#666;font-family:ui-monospace,monospace;font-size:12px}.score{font-variant-numeric:tabular-nums}
.kind,.area{color:#888;font-size:12px}.missing{width:320px;height:200px;display:flex;align-items:center;
justify-content:center;background:#eee;color:#777;text-align:center;padding:8px}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #e5e5e5;padding:3px 10px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}pre{background:#f2f2f2;padding:10px;overflow:auto}
.none{color:#888}.errors td{word-break:break-all}
"""

_JS = """
(function(){
  function mark(key,cls,on){document.querySelectorAll('[data-r="'+key+'"]').forEach(function(e){
    e.classList.toggle(cls,on);});}
  document.addEventListener('mouseover',function(e){var t=e.target.closest&&e.target.closest('[data-r]');
    if(t)mark(t.getAttribute('data-r'),'hl',true);});
  document.addEventListener('mouseout',function(e){var t=e.target.closest&&e.target.closest('[data-r]');
    if(t)mark(t.getAttribute('data-r'),'hl',false);});
  function select(){document.querySelectorAll('.sel').forEach(function(e){e.classList.remove('sel');});
    var m=location.hash.match(/^#r-(.+)$/);if(!m)return;var key=decodeURIComponent(m[1]);mark(key,'sel',true);
    var n=document.getElementById('r-'+key);if(!n)return;
    for(var p=n.parentElement;p;p=p.parentElement){if(p.tagName==='DETAILS')p.open=true;}
    n.scrollIntoView({block:'center'});}
  window.addEventListener('hashchange',select);select();
})();
"""


def render_report(images: Sequence[ReportImage], *, title: str, parameters: Mapping[str, Any] | None = None,
                  errors: Sequence[Mapping[str, Any]] = (), summary: Mapping[str, Any] | None = None,
                  note: str | None = None, category_counts: Mapping[str, Mapping[str, Any]] | None = None,
                  thumb_side: int = THUMB_SIDE) -> str:
    """The report page for *images* as one HTML string (nothing external: thumbnails are inline JPEGs).

    *category_counts* (``{name: {"path", "regions", "images", "score"}}``) defaults to a count over *images*;
    *summary* is shown in the header (``{"images": …}``), *note* under it (e.g. that only some images are shown).
    """
    keys = sorted({r.path for im in images for r in im.regions if r.path})
    fixed = colour_map(keys)  # one colour per category for the whole report
    if category_counts is None:
        category_counts = _count(im.regions for im in images)
    rows = []
    for name, c in sorted(category_counts.items(), key=lambda kv: (-kv[1]["regions"], kv[0])):
        colour = fixed.get(c.get("path", ""), (160, 160, 160))
        rows.append(f'<tr><td><span class="sw" style="background:rgb{colour}"></span>{_text(name)}</td>'
                    f'<td class="path">{_text(c.get("path", ""))}</td><td class="n">{c["regions"]}</td>'
                    f'<td class="n">{c["images"]}</td><td class="n">{c["score"]:.2f}</td></tr>')
    cats = ("<table class=\"categories\"><tr><th>category</th><th>label path</th><th>regions</th><th>images</th>"
            f"<th>mean score</th></tr>{''.join(rows)}</table>") if rows else '<p class="none">no regions</p>'
    err_rows = "".join(f"<tr><td>{_text(e.get('path', e.get('file_name', '')))}</td><td>{_text(e.get('reason', ''))}"
                       "</td></tr>" for e in errors)
    errs = (f'<table class="errors"><tr><th>image</th><th>reason</th></tr>{err_rows}</table>' if errors
            else '<p class="none">none</p>')
    meta = " · ".join(f"{_text(k)}: {_text(v)}" for k, v in (summary or {}).items())
    params = (f"<details><summary>parameters</summary><pre>{_text(json.dumps(parameters, indent=2, default=str))}"
              "</pre></details>") if parameters else ""
    body = "".join(_image_html(k, im, fixed, thumb_side) for k, im in enumerate(images))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><meta name="generator" content="clipsam {__version__}">'
            f"<title>{_text(title)}</title><style>{_CSS}</style></head><body><header><h1>{_text(title)}</h1>"
            f'<div class="meta">{meta}</div>{f"<p>{_text(note)}</p>" if note else ""}</header>'
            f"<main>{body}</main><h2>Regions per category</h2>{cats}"
            f"<h2>Images that could not be processed ({len(errors)})</h2>{errs}"
            f"<h2>Run</h2>{params}<p class=\"meta\">clipsam {__version__}</p><script>{_JS}</script></body></html>")


def _count(region_lists: Iterable[Sequence[ReportRegion]]) -> dict[str, dict[str, Any]]:
    """Regions per category over images: ``{name: {"path", "regions", "images", "score" (mean)}}``."""
    counts: dict[str, dict[str, Any]] = {}
    for regions in region_lists:
        seen = set()
        for r in regions:
            name = r.category or r.path or r.kind
            path = r.path or (r.category if r.kind.startswith("unknown") else "")
            c = counts.setdefault(name, {"path": path, "regions": 0, "images": 0, "score": 0.0})
            c["regions"] += 1
            c["score"] += r.score
            if name not in seen:
                c["images"] += 1
                seen.add(name)
    for c in counts.values():
        c["score"] = c["score"] / c["regions"]
    return counts


def segmentation_report(seg: Segmentation, image: Any = None, *, title: str | None = None,
                        parameters: Mapping[str, Any] | None = None) -> str:
    """The report page of one segmentation (its image from *image*, or re-read from ``image_path``)."""
    name = os.path.basename(seg.image_path) if seg.image_path else "image"
    picture = image if image is not None else seg.image_path
    item = ReportImage(name, tuple(seg.image_size), regions_of_segmentation(seg), picture, dict(seg.prompts))
    h, w = seg.image_size
    summary = {"image": name, "size": f"{w}×{h}", "regions": len(seg), **({"query": ", ".join(seg.query)}
                                                                      if seg.query else {}),
               **({"taxonomy": seg.taxonomy} if seg.taxonomy else {}), **dict(seg.models)}
    return render_report([item], title=title or f"clipsam: {name}", parameters=parameters, summary=summary)


def label_report(out: str | os.PathLike, *, max_images: int = 200, image_root: str | os.PathLike | None = None,
                 thumb_side: int = THUMB_SIDE, allow_outside_root: bool = False) -> tuple[str, dict[str, int]]:
    """The report page of a ``clipsam label`` output folder and its counts (``images``, ``shown``,
    ``regions``, ``errors``, ``outside_root``). Category counts cover every image; thumbnails the first
    *max_images* (in ``annotations.json`` order). Images are found where the run read them (``parts/``), else under
    *image_root* by ``file_name``.

    An output folder may come from someone else, so it does not choose which local files go into the page: an image
    is embedded only when it lies inside *image_root* (default: the folder that holds *out*, where ``clipsam label
    photos/ --out labels/`` leaves both), links resolved, unless
    *allow_outside_root*; the others are shown without a thumbnail and counted in ``outside_root``.

    Raises:
        ClipsamError: *out* is not a finished ``clipsam label`` output, or its files are malformed.
    """
    root = Path(out)
    ann_path = root / "annotations.json"
    if not ann_path.is_file():
        raise ClipsamError(f"{root}: no annotations.json here; give the --out folder of a finished clipsam label run")
    try:
        coco = json.loads(read_text_capped(ann_path, "COCO JSON"))
        base = Path(image_root) if image_root is not None else root.resolve().parent
        return _label_report(root, coco, max_images, base,
                             thumb_side, allow_outside_root)
    except ClipsamError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ClipsamError(f"{ann_path}: not a COCO file clipsam can read ({type(exc).__name__}: {exc})") from None


def _label_report(root: Path, coco: Mapping[str, Any], max_images: int, image_root: Path, thumb_side: int,
                  allow_outside_root: bool) -> tuple[str, dict[str, int]]:
    images, annotations, categories = coco["images"], coco["annotations"], coco["categories"]
    run = _read_json(root / "run.json")
    errors = _read_errors(root / "errors.jsonl")
    cats = {c["id"]: c for c in categories}
    by_image: dict[Any, list[Mapping[str, Any]]] = {}
    for a in annotations:
        by_image.setdefault(a["image_id"], []).append(a)
    regions = {im["id"]: regions_of_coco(by_image.get(im["id"], []), cats) for im in images}
    counts = _count(regions.values())
    base = image_root.resolve()
    shown, outside = [], 0
    for im in images[:max_images]:
        part = _read_json(root / "parts" / f"{im['id']}.json")
        candidates = [(part.get("source") or {}).get("path"), base / str(im["file_name"])]
        found = [str(c) for c in candidates if c and os.path.isfile(c)]
        allowed = [c for c in found if allow_outside_root or _inside(c, base)]
        outside += bool(found) and not allowed
        shown.append(ReportImage(str(im["file_name"]), (int(im["height"]), int(im["width"])), regions[im["id"]],
                                 allowed[0] if allowed else None))
    note = (f"Showing the first {len(shown)} of {len(images)} images (--max-images); the category counts cover all."
            if len(images) > len(shown) else None)
    summary = {"images": len(images), "regions": len(annotations), "errors": len(errors),
               **{k: v for k, v in (run.get("models") or {}).items() if v}}
    if run.get("finished"):
        summary["finished"] = run["finished"]
    page = render_report(shown, title=f"clipsam label: {root.resolve().name}", parameters=run.get("parameters"),
                         errors=errors, summary=summary, note=note, category_counts=counts, thumb_side=thumb_side)
    return page, {"images": len(images), "shown": len(shown), "regions": len(annotations), "errors": len(errors),
                  "outside_root": outside}


def _inside(path: str, base: Path) -> bool:
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return resolved == base or base in resolved.parents


def _read_errors(path: Path) -> list[dict[str, Any]]:
    errors = []
    if path.is_file():
        for line in read_text_capped(path, "error list").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                errors.append(row)
    return errors


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_report(path: str | os.PathLike, page: str) -> None:
    """Write *page* to *path* atomically (a half-written report never replaces a good one)."""
    from .files import atomic_write

    atomic_write(Path(path), page.encode("utf-8"))
