"""``clipsam index`` and ``clipsam search``: region search over a collection (LanceDB)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..files import atomic_write, check_outputs, marked_image_bytes
from .common import (
    TAXONOMY_HELP,
    check_device,
    check_labels,
    check_model,
    check_runtime,
    clip_option,
    device_option,
    emit_json,
    ensure_weights,
    err,
    fail,
    generator_params,
    guard,
    json_option,
    out,
    overwrite_option,
    parse_box,
    runtime_option,
    sam_option,
    show,
)


@guard
def index(
    source: Path = typer.Argument(..., help="A folder of images (recursive), a text file of paths, or a COCO JSON."),
    db: Path = typer.Option(..., "--db", help="The region database folder (created; reused to add more)."),
    taxonomy: str | None = typer.Option("everyday", "--taxonomy", "-t", help="Labels for the regions. "
                                        + TAXONOMY_HELP),
    sam: str = sam_option(),
    clip: str = clip_option(),
    device: str = device_option(),
    runtime: str = runtime_option(),
    max_side: int = typer.Option(1024, "--max-side", help="Processing long side in pixels."),
    points_per_side: int | None = typer.Option(None, "--points-per-side", help="Automatic grid density."),
    batch: int = typer.Option(64, "--batch", help="Write finished images N at a time (or every 30 s): fewer, larger "
                              "table fragments; a kill loses at most this much work."),
    as_json: bool = json_option(),
) -> None:
    """Segment, label and embed every region of a collection into a searchable database (incremental)."""
    from rich.progress import MofNCompleteColumn

    from ..dataset import list_images
    from ..search import RegionIndex
    from ..segmenter import Segmenter

    if db.exists() and not db.is_dir():
        fail(f"--db {db}: is a file; a region database is a folder (new, or one made by clipsam index)")
    if batch < 1:
        fail(f"--batch must be at least 1, got {batch}")
    check_model(sam, "sam")
    check_model(clip, "clip")
    check_device(device)
    check_runtime(runtime, device)
    segmenter = Segmenter(sam=sam, clip=clip, device=device, runtime=runtime, max_side=max_side,
                          generator_params=generator_params(points_per_side), text_cache=sam != "tiny-random")
    paths = [i.path for i in list_images(source)]
    store = RegionIndex(db, segmenter, taxonomy=taxonomy, flush_images=batch)
    store.check_models()
    ensure_weights([sam, clip], show=not as_json, verb="index")
    progress = Progress(TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[regions]} regions"), console=err, disable=as_json)
    errors: list[dict[str, Any]] = []
    found = {"regions": len(store)}  # rows are written in batches: count what each image added as it finishes
    with progress:
        task = progress.add_task("indexing", total=len(paths), regions=found["regions"])

        def on_result(res: dict[str, Any]) -> None:
            if res["status"] == "error":
                errors.append(res)
            found["regions"] += res.get("regions", 0)
            progress.update(task, advance=1, regions=f"{found['regions']:,}")

        counts = store.add(paths, on_result=on_result)
    summary = {"db": str(db), **counts, "total_regions": len(store), "total_images": store.image_count(),
               "errors": [{"path": e["path"], "reason": e["reason"]} for e in errors]}
    if as_json:
        emit_json(summary)
        return
    out.print(f"added {counts['added']} images ({counts['regions']} regions), skipped {counts['skipped']} already "
              f"indexed, {counts['failed']} failed; {summary['total_regions']} regions in {show(db)}")
    for e in errors:
        out.print(f"[yellow]skipped[/] {show(e['reason'])}", highlight=False)


@guard
def search(
    query: str | None = typer.Argument(None, help="What to find, e.g. 'red car'."),
    db: Path = typer.Option(..., "--db", help="The region database made by clipsam index."),
    k: int = typer.Option(10, "-k", "--k", help="How many regions."),
    like: Path | None = typer.Option(None, "--like", help="Query by example: an image (see --box)."),
    box: str | None = typer.Option(None, "--box", help="With --like: the example region x0,y0,x1,y1."),
    label_filter: str | None = typer.Option(None, "--label", help="Only regions under this label (e.g. vehicle)."),
    min_area: int | None = typer.Option(None, "--min-area", help="Only regions of at least this many pixels."),
    save_crops: Path | None = typer.Option(None, "--save-crops", help="Write a masked crop and an overlay per hit."),
    clip: str | None = typer.Option(None, "--clip", help="CLIP model (default: the one the database was built with)."),
    overwrite: bool = overwrite_option(),
    as_json: bool = json_option(),
) -> None:
    """Find regions by text or by example across an indexed collection."""
    from ..search import RegionIndex

    if (query is None) == (like is None):
        fail("give a text query or --like IMAGE (one of them)")
    if query is not None and not query.strip():
        fail("the text query is empty")
    if box and like is None:
        fail("--box goes with --like IMAGE")
    if like is not None and not like.is_file():
        fail(f"--like {like}: no such image file")
    if k < 1:
        fail(f"-k must be at least 1, got {k}")
    if db.exists() and not db.is_dir():
        fail(f"--db {db}: is a file, not a region database (a folder made by clipsam index)")
    if save_crops is not None and save_crops.exists() and not save_crops.is_dir():
        fail(f"--save-crops {save_crops}: is a file; give a folder")
    if save_crops is not None:  # the names a search of k hits writes: clipsam's own from an earlier search, or new
        check_outputs([("--save-crops", save_crops / f"{n:03d}_{what}.png") for n in range(1, k + 1)
                       for what in ("crop", "overlay")], [like] if like is not None else [], overwrite=overwrite)
    meta = RegionIndex(db).meta() if db.exists() else None
    store = RegionIndex(db)
    if clip is not None or meta is not None:
        from ..segmenter import Segmenter

        name = clip or meta["clip"]  # type: ignore[index]
        check_model(name, "clip")
        segmenter = Segmenter(sam=(meta or {}).get("sam", "vit_b"), clip=name, seed=(meta or {}).get("seed", 0),
                              text_cache=name != "tiny-random")
        store = RegionIndex(db, segmenter)
        store.check_models(meta)
        if label_filter:
            tax = store.taxonomy_of(meta)
            if tax is not None:
                check_labels([label_filter], tax, "--label")
        ensure_weights([name], show=not as_json, verb="search")
    hits = store.search(query if like is None else like, k=k, box=parse_box(box) if box else None,
                        label=label_filter, min_area=min_area)
    files = [h.file_status() for h in hits]  # moved or edited since indexing: said per hit, never a failed search
    saved = _save_hits(hits, files, save_crops) if save_crops is not None else 0
    if as_json:
        emit_json([h.to_dict() | {"file": f} for h, f in zip(hits, files, strict=True)])  # masks as COCO RLE
        return
    table = Table(title=show(f"{len(hits)} regions for {query or str(like)!r}"), title_justify="left",
                  header_style="bold")
    for col in ("#", "similarity", "image", "region", "label path", "score", "area", "bbox x,y,w,h"):
        table.add_column(col, overflow="fold")  # a long path wraps: the file name is never cut off
    for n, (h, f) in enumerate(zip(hits, files, strict=True), 1):
        where = show(h.image_path) + ("" if f == "ok" else f" [yellow]({f} since indexing)[/]")
        table.add_row(str(n), f"{h.similarity:.3f}", where, str(h.region_id),
                      show("/".join(h.label_path) or h.kind), f"{h.score:.2f}", f"{h.area:,}",
                      ",".join(f"{v:.0f}" for v in h.bbox_xywh))
    out.print(table)
    if save_crops is not None:
        out.print(f"crops and overlays of {saved} hit(s) written to [bold]{show(save_crops)}[/]")
    stale = sum(f != "ok" for f in files)
    if stale:
        out.print(f"[yellow]{stale} hit(s) point at images moved, deleted or edited since indexing[/]: run clipsam "
                  "index on their folder again to update the database")


def _save_hits(hits: list[Any], files: list[str], folder: Path) -> int:
    """A masked crop and an overlay per hit whose image is still the one indexed; returns how many."""
    import numpy as np
    from PIL import Image

    from ..core.crops import crop_region
    from ..core.image import load_image
    from ..overlay import render_overlay
    from ..result import Region, Segmentation

    folder.mkdir(parents=True, exist_ok=True)
    saved = 0
    for n, (h, f) in enumerate(zip(hits, files, strict=True), 1):
        if f != "ok":
            continue
        image = load_image(h.image_path)
        mask = h.mask()
        side = int(max(h.bbox_xywh[2], h.bbox_xywh[3], 1))
        crop = crop_region(image, mask, h.bbox_xywh, size=min(max(side, 64), 512), margin=0.1, fill="grey")
        atomic_write(folder / f"{n:03d}_crop.png", marked_image_bytes(Image.fromarray(crop), ".png"))
        region = Region(id=h.region_id, rle=h.rle, bbox_xywh=h.bbox_xywh, area=h.area, label=h.label or h.kind,
                        score=h.score, label_path=h.label_path, kind=h.kind)
        seg = Segmentation(image_size=mask.shape, regions=(region,))
        overlay = render_overlay(seg, np.asarray(image))
        atomic_write(folder / f"{n:03d}_overlay.png", marked_image_bytes(overlay, ".png"))
        saved += 1
    return saved
