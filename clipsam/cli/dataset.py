"""``clipsam label`` (COCO pseudo-labels for a collection, resumable) and ``clipsam eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .common import (
    TAXONOMY_HELP,
    check_device,
    check_labels,
    check_model,
    check_runtime,
    check_workers,
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
    runtime_option,
    sam_option,
    show,
)


def _check_label_options(engine: str, workers: int, min_area: int, max_regions: int, part_points: int,
                         min_score: float, out_dir: Path, formats: str, strategy: str, speed: str) -> tuple[str, ...]:
    """Refuse bad values before anything runs; returns the export formats besides COCO."""
    from ..dataset import EXPORT_FORMATS
    from ..stages.guide import STRATEGIES

    wanted = [f.strip().lower() for f in formats.split(",") if f.strip()]
    if not wanted or any(f not in ("coco", *EXPORT_FORMATS) for f in wanted):
        fail(f"--format must be coco, {', '.join(EXPORT_FORMATS)} or a comma-separated mix, got {show(formats)!r}")
    if strategy not in STRATEGIES:
        fail(f"--strategy must be one of {', '.join(STRATEGIES)}, got {show(strategy)!r}")
    if speed not in ("exact", "fast"):
        fail(f"--speed must be exact or fast, got {show(speed)!r}")
    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, got {engine!r}")
    check_workers(workers)
    for option, value in (("--min-area", min_area), ("--max-regions", max_regions), ("--part-points", part_points)):
        if value < 0:
            fail(f"{option} must be 0 or more, got {value}")
    if not 0.0 <= min_score <= 1.0:
        fail(f"--min-score must be in [0, 1], got {min_score}")
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out_dir}: is a file; give a folder (new, or the one of an earlier run to resume it)")
    return tuple(f for f in dict.fromkeys(wanted) if f != "coco")


@guard
def label(
    source: Path = typer.Argument(..., help="A folder of images (recursive), a text file of paths, or a COCO JSON."),
    taxonomy: str = typer.Option(..., "--taxonomy", "-t", help=TAXONOMY_HELP),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (reuse it to resume)."),
    workers: int = typer.Option(1, "--workers", "-w", help="Processes (local) or actors (ray)."),
    engine: str = typer.Option("local", "--engine", help="local or ray (pip install 'clipsam\\[ray]')."),
    min_score: float = typer.Option(0.0, "--min-score", help="Drop regions whose label score is lower."),
    min_area: int = typer.Option(0, "--min-area", help="Drop regions smaller than this (pixels)."),
    labels: str | None = typer.Option(None, "--labels", help="Keep only these labels (comma-separated; a label "
                                         "keeps everything below it)."),
    max_regions: int = typer.Option(0, "--max-regions", help="Keep at most N regions per image (best first)."),
    unknown: bool = typer.Option(False, "--unknown", help="Also keep regions no label matched.", metavar=""),
    pngs: bool = typer.Option(False, "--png", help="Also write semantic and instance index PNGs.", metavar=""),
    formats: str = typer.Option("coco", "--format", help="coco (OUT/annotations.json, always written), yolo "
                                "(OUT/data.yaml, labels/*.txt polygons, images/ links), label-studio "
                                "(OUT/label-studio.json tasks with predictions, OUT/label-studio-config.xml) and/or "
                                "cvat (OUT/cvat/annotations.xml, CVAT for images 1.1: parts grouped with their "
                                "wholes, drawn over them)."),
    ls_root: str = typer.Option("/data/local-files/?d=", "--ls-root", help="With --format label-studio: prefix of "
                                "each task's image address (a URL prefix, or Label Studio's local files)."),
    force: bool = typer.Option(False, "--force", metavar="",
                               help="Discard an earlier run in OUT made with other parameters."),
    overwrite: bool = overwrite_option(),
    image_root: Path | None = typer.Option(None, "--image-root", help="Base folder for relative paths in a "
                                              "text file or COCO JSON (default: its own folder)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Let a COCO JSON's file_name "
                                            "point outside the image root (../, absolute paths).", metavar=""),
    sam: str = sam_option(),
    clip: str = clip_option(),
    device: str = device_option(),
    runtime: str = runtime_option(),
    max_side: int = typer.Option(1024, "--max-side", help="Processing long side in pixels."),
    full_resolution: bool = typer.Option(True, "--full-resolution/--no-full-resolution",
                                         help="Masks at the original size from SAM's logits (default), or the "
                                         "processing-size masks scaled up.", metavar=""),
    points_per_side: int | None = typer.Option(None, "--points-per-side", help="Automatic grid density."),
    speed: str = typer.Option("exact", "--speed", help="exact (stock SAM's masks) or fast (approximate)."),
    part_points: int = typer.Option(0, "--part-points", help="Coarse-to-fine part prompts per object."),
    strategy: str = typer.Option("grid", "--strategy", help="grid (SAM's point grid) or guided (prompts placed by "
                                 "CLIP's relevance maps, level by level)."),
    as_json: bool = json_option(),
) -> None:
    """Pseudo-label a collection into COCO (RLE masks, label paths, part-whole parents); resumable."""
    import time as _time

    from ..dataset import Filters, LabelJob, list_images

    exports = _check_label_options(engine, workers, min_area, max_regions, part_points, min_score, out_dir, formats,
                                   strategy, speed)
    check_model(sam, "sam")
    check_model(clip, "clip")
    check_device(device)
    check_runtime(runtime, device)
    spec = {"sam": sam, "clip": clip, "device": device, "runtime": runtime, "max_side": max_side,
            "full_resolution": full_resolution,
            "speed": speed,
            "generator_params": generator_params(points_per_side), "text_cache": sam != "tiny-random"}
    filters = Filters(min_score=min_score, min_area=min_area,
                      labels=tuple(t.strip() for t in (labels or "").split(",") if t.strip()),
                      max_regions=max_regions, include_unknown=unknown)
    items = list_images(source, image_root, allow_outside_root=allow_outside_root)
    segment_params: dict = {"part_points": part_points} if part_points else {}
    if strategy != "grid":
        segment_params["strategy"] = strategy
    job = LabelJob(out_dir, taxonomy, filters=filters, segmenter_spec=spec, pngs=pngs, segment_params=segment_params,
                   formats=exports, ls_root=ls_root)
    check_labels(list(filters.labels), job.tax, "--labels")
    items = job.inputs(items)
    record = job.prepare(force=force, items=items, overwrite=overwrite)
    todo = job.pending(items)
    ensure_weights([sam, clip], show=not as_json, verb="label")
    start = _time.time()
    counts = _run_with_progress(job, todo, engine, workers, as_json)
    counts.update(found=len(items), resumed=len(items) - len(todo))
    record = job.finish(record, counts)
    summary = {"out": str(out_dir), **record["counts"], "seconds": round(_time.time() - start, 2)}
    if as_json:
        emit_json(summary)
        return
    _print_summary(summary, out_dir)


def _run_with_progress(job: Any, todo: list, engine: str, workers: int, quiet: bool) -> dict[str, int]:
    """Label *todo* on *engine* with a progress bar (rate, errors); counts of processed and failed images."""
    import time as _time

    from rich.progress import MofNCompleteColumn

    from ..dataset import run_local, run_ray

    counts = {"processed": 0, "failed": 0}
    start = _time.time()
    progress = Progress(TextColumn("[bold]labelling"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(),
                        TextColumn("[red]{task.fields[errors]} errors"), console=err, disable=quiet)
    with progress:
        task = progress.add_task("labelling", total=len(todo), rate="-", errors=0)

        def on_result(res: dict[str, Any]) -> None:
            counts["processed"] += 1
            counts["failed"] += res["status"] == "error"
            rate = counts["processed"] / max(_time.time() - start, 1e-9)
            progress.update(task, advance=1, rate=f"{rate:.2f}", errors=counts["failed"])

        (run_ray if engine == "ray" else run_local)(job, todo, workers=workers, on_result=on_result)
    return counts


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    table = Table(title=show(f"clipsam label -> {out_dir}"), title_justify="left", header_style="bold")
    table.add_column("")
    table.add_column("", justify="right")
    for key in ("found", "resumed", "processed", "images", "annotations", "yolo_polygons", "label_studio_tasks",
                "cvat_masks", "errors", "seconds"):
        if key in summary:
            table.add_row(key, str(summary[key]))
    out.print(table)
    if summary["errors"]:
        out.print(f"[yellow]{summary['errors']} image(s) could not be processed: see "
                  f"{show(out_dir / 'errors.jsonl')}[/]")
    out.print(f"[dim]pycocotools: COCO('{show(out_dir / 'annotations.json')}') as ground truth; as predictions, "
              "gt.loadRes(json.load(open(...))['annotations'])[/]", soft_wrap=True)
    if "yolo_polygons" in summary:  # Ultralytics' default paints masks into one map: parts would cut their wholes
        out.print(f"train with: yolo segment train data={show(out_dir / 'data.yaml')} model=yolo11n-seg.pt "
                  "overlap_mask=False  (keeps each part and its whole whole)", soft_wrap=True)  # copyable: one line
    if "label_studio_tasks" in summary:
        out.print(f"Label Studio: a project with the config {show(out_dir / 'label-studio-config.xml')}, then import "
                  f"{show(out_dir / 'label-studio.json')} (Data Manager -> Import)", soft_wrap=True)
    if "cvat_masks" in summary:
        out.print(f"CVAT: in a task with these images, Actions -> Upload annotations -> CVAT 1.1, "
                  f"{show(out_dir / 'cvat' / 'annotations.xml')}", soft_wrap=True)


@guard
def eval_cmd(
    pred: Path = typer.Argument(..., help="annotations.json written by clipsam label."),
    gt: Path = typer.Argument(..., help="Ground truth: a COCO JSON, or a folder of PNG index masks."),
    classes: Path | None = typer.Option(None, "--classes", help="For PNG ground truth: class names, one per "
                                           "line (line i = index i)."),
    taxonomy: str | None = typer.Option(None, "--taxonomy", "-t", help="Gives GT categories label paths "
                                           "for the per-level accuracy."),
    as_json: bool = json_option(),
) -> None:
    """Mask AP (COCOeval), semantic mIoU per class, and accuracy per taxonomy level."""
    from ..evaluate import evaluate

    report = evaluate(pred, gt, classes=classes, taxonomy=taxonomy)
    if as_json:
        emit_json(report.to_dict())
        return
    if report.mask_ap is not None:
        out.print("mask " + "  ".join(f"{k} {v:.3f}" for k, v in report.mask_ap.items()))
    out.print(f"mIoU {report.miou:.3f} over {len(report.class_iou)} classes")
    table = Table(header_style="bold")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, v in sorted(report.class_iou.items(), key=lambda kv: -kv[1]):
        table.add_row(show(name), f"{v:.3f}")
    out.print(table)
    for level, acc in report.level_accuracy.items():
        out.print(f"level {level} accuracy {acc:.3f} ({report.level_counts[level]} instances)")
    if report.label_precision is not None:
        out.print(f"label precision {report.label_precision:.3f} over every labelled prediction "
                  f"({report.counts.get('on_background', 0)} lying mostly outside every instance)")
        table = Table(header_style="bold", title="reliability: share right per score bin")
        for col in ("score", "predictions", "right"):
            table.add_column(col, justify="left" if col == "score" else "right")
        for row in report.reliability:
            table.add_row(row["bin"], str(row["predictions"]), "-" if row["right"] is None else f"{row['right']:.2f}")
        out.print(table)
    if report.counts.get("parts_ignored"):
        out.print(f"{report.counts['parts_ignored']} part prediction(s) ignored: the ground truth has no part "
                  "categories for them")
    for warning in report.warnings:
        out.print(f"[yellow]warning:[/] {show(warning)}")
