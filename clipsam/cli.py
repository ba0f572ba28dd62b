"""The ``clipsam`` command line: a thin layer that parses, calls the library and renders.

Every verb has ``--json`` (machine output on stdout); errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.tree import Tree

from . import weights as W
from ._version import __version__
from .errors import ClipsamError
from .image import printable

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
                  help="Text-prompted, open-vocabulary, hierarchical segmentation with Segment Anything + CLIP.")
weights_app = typer.Typer(no_args_is_help=True, help="List, download, import and verify model checkpoints.")
taxonomy_app = typer.Typer(no_args_is_help=True, help="Browse and validate label taxonomies.")
app.add_typer(weights_app, name="weights")
app.add_typer(taxonomy_app, name="taxonomy")

out = Console()
err = Console(stderr=True)

SAM_HELP = ("SAM model: vit_b, vit_l, vit_h, sam2.1_hiera_tiny/_small/_base_plus/_large, or tiny-random "
            "(random weights, for tests only: output meaningless).")
CLIP_HELP = "CLIP model: ViT-B-16/openai, ViT-B-32/openai, ViT-L-14/openai, … or tiny-random (tests only)."
JSON_HELP = "Print machine-readable JSON on stdout instead of tables."
#: Overlay formats ``--out`` can write (Pillow picks the format from the suffix).
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _show(text: Any) -> str:
    """A user-provided string made safe for rich: undecodable bytes of file names replaced, markup escaped."""
    return escape(printable(str(text)))


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {_show(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _os_error_message(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    where = exc.filename if exc.filename is not None else ""
    text = f"{where}: " if where else ""
    text += f"{exc.strerror or exc}" + (f" ({name})" if name else "")
    if exc.errno == errno.ENOSPC:
        text += "; finished work is kept: free some space and run the same command again"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += "; choose a writable place (CLIPSAM_HOME sets clipsam's cache folder)"
    return text


#: Exceptions typer itself renders (usage errors, exits): typer vendors click in some versions, so find its class.
_PASS_THROUGH = (typer.Exit, typer.Abort,
                 *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every error into one line on stderr and a non-zero exit, never a traceback (CLIPSAM_DEBUG=1 shows it)."""
    import functools
    import os

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:
            if os.environ.get("CLIPSAM_DEBUG"):
                raise
            if isinstance(exc, ClipsamError):
                _fail(str(exc))
            elif isinstance(exc, OSError):
                _fail(_os_error_message(exc))
            elif isinstance(exc, RecursionError):
                _fail("input nested too deeply to process")
            elif isinstance(exc, MemoryError):
                _fail("out of memory; try a smaller --max-side or fewer --workers")
            else:
                _fail(f"unexpected {type(exc).__name__}: {exc} (please report it; CLIPSAM_DEBUG=1 shows the traceback)",
                      1)

    return wrapper


def _check_output_file(path: Path | None, option: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output path that cannot be written, before any model runs."""
    if path is None:
        return
    if path.is_dir() or str(path).endswith(("/", "\\")):
        _fail(f"{option} {path}: is a folder; give a file name" + (f" ending in {', '.join(suffixes)}"
                                                                 if suffixes else ""))
    if suffixes is not None and path.suffix.lower() not in suffixes:
        _fail(f"{option} {path}: unsupported file type {path.suffix or '(none)'!r}; use one of {', '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        _fail(f"{option} {path}: folder {parent} does not exist")


def _check_device(device: str) -> None:
    """Fail on an unavailable --device before weights are downloaded or models built."""
    from .config import check_device_name
    from .models.build import resolve_device

    check_device_name(device)
    resolve_device(device)


def _check_workers(workers: int) -> None:
    if workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")


def _check_labels(labels: list[str], taxonomy: Any, option: str) -> None:
    """Refuse label filters that name nothing in *taxonomy*, suggesting the closest names."""
    import difflib

    names = sorted({n.name for n in taxonomy} | {p for n in taxonomy for p in n.prompts}
                   | {n.path_str for n in taxonomy})
    for lbl in labels:
        if not taxonomy.find(lbl):
            close = difflib.get_close_matches(lbl, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                f" (see `clipsam taxonomy show {taxonomy.name}`)"
            _fail(f"{option} {lbl!r} names no label of taxonomy {taxonomy.name!r}{hint}")


def _generator_params(points_per_side: int | None) -> dict[str, Any]:
    """--points-per-side as generator parameters (a model entry's own defaults come with the Segmenter)."""
    from .config import check_generator_params

    return check_generator_params({} if points_per_side is None else {"points_per_side": points_per_side})


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def _download_progress(enabled: bool) -> Iterator[Callable[[str], Callable[[int, int | None], None]]]:
    """Yields ``make(name) -> progress callback`` drawing one rich bar per download (on stderr)."""
    if not enabled:
        yield lambda name: (lambda done, total: None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=err, transient=False)
    tasks: dict[str, Any] = {}

    def make(name: str) -> Callable[[int, int | None], None]:
        def update(done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)
        return update

    with progress:
        yield make


def _check_model(name: str, family: str) -> None:
    """Refuse an unknown or wrong-family model name before anything is downloaded or built."""
    if name == "tiny-random":
        return
    known = sorted(n for n, c in W.REGISTRY.items() if c.family == family) + ["tiny-random"]
    try:
        ckpt = W.get(name)
    except ClipsamError:
        _fail(f"unknown {family.upper()} model {name!r}; choose one of: {', '.join(known)}")
    if ckpt.family != family:
        _fail(f"{name!r} is a {ckpt.family.upper()} checkpoint, not {family.upper()}; "
              f"choose one of: {', '.join(known)}")


def _ensure_weights(names: list[str], show: bool) -> None:
    """Fetch missing registry weights up front, with progress bars (tiny-random needs none)."""
    wanted = [W.get(n).name for n in names if n != "tiny-random"]
    with _download_progress(show) as make:
        for name in wanted:
            W.ensure(name, progress=make(name))


def _parse_point(text: str) -> tuple[float, float, int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1]), 1
        if len(parts) == 3 and parts[2] in ("0", "1"):
            return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        pass
    raise typer.BadParameter(f"{text!r}: expected x,y or x,y,label with label 1 (foreground) or 0 (background)")


def _parse_box(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise typer.BadParameter(f"{text!r}: expected x0,y0,x1,y1 in pixels")
    return vals


def _regions_table(seg: Any, title: str) -> Table:
    table = Table(title=_show(title), title_justify="left", header_style="bold")
    for col, kw in (("id", {"justify": "right"}), ("label", {}), ("score", {"justify": "right"}),
                    ("path", {}), ("kind", {}), ("area", {"justify": "right"}), ("bbox x,y,w,h", {}),
                    ("parent", {"justify": "right"}), ("pred IoU", {"justify": "right"})):
        table.add_column(col, **kw)
    for r in sorted(seg.regions, key=lambda r: (-r.score, r.id)):
        table.add_row(str(r.id), _show(r.label or "-"), f"{r.score:.2f}" if r.label_path else "-",
                      _show(r.label_path_str or "-"), r.kind, f"{r.area:,}", ",".join(f"{v:.0f}" for v in r.bbox_xywh),
                      "-" if r.parent_id is None else str(r.parent_id), f"{r.predicted_iou:.2f}")
    return table


def _rich_tree(seg: Any) -> Tree:
    name = Path(seg.image_path).name if seg.image_path else "image"
    root = Tree(f"[bold]{_show(name)}[/] ({seg.image_size[1]}x{seg.image_size[0]}, {len(seg)} regions)")
    kids = seg.tree
    by_id = {r.id: r for r in seg.regions}

    def text(r: Any) -> str:
        label = r.label or "(unlabelled)"
        tag = r.kind if r.kind in ("part", "unknown", "unknown part") else (r.label_path_str or r.kind)
        style = "dim" if r.kind.startswith("unknown") else ("cyan" if r.kind == "part" else "bold green")
        return f"[{style}]{_show(label)}[/] {r.score:.2f} {_show(f'[{tag}]')} [dim]#{r.id}[/]"

    def add(node: Tree, rid: int) -> None:
        child = node.add(text(by_id[rid]))
        for cid in kids.get(rid, []):
            add(child, cid)

    for rid in kids.get(None, []):
        add(root, rid)
    return root


@app.command()
@_guard
def segment(
    image: Path = typer.Argument(..., help="Image file (JPEG, PNG, TIFF, WebP, …)."),
    query: list[str] | None = typer.Argument(None, help="Labels to find, e.g. dog or 'dog, cat'. "
                                                "Leave out to segment everything."),
    points: list[str] | None = typer.Option(None, "--points", "-p", help="Click x,y[,label] in pixels; label 1 = "
                                               "foreground (default), 0 = background. Repeat for more clicks."),
    box: str | None = typer.Option(None, "--box", "-b", help="Box x0,y0,x1,y1 in pixels."),
    taxonomy: str | None = typer.Option(None, "--taxonomy", "-t", help="Taxonomy: a shipped name "
                                           "(everyday, coco, parts) or a YAML file."),
    tree: bool = typer.Option(False, "--tree", help="Print the labelled part-whole tree."),
    out_path: Path | None = typer.Option(None, "--out", "-o", help="Write an overlay image (PNG/JPEG)."),
    save_json: Path | None = typer.Option(None, "--save-json", help="Write the result JSON to a file."),
    refine: bool = typer.Option(False, "--refine", help="Re-predict each matched mask from its own box."),
    part_points: int = typer.Option(0, "--part-points", help="Coarse-to-fine: prompt SAM with up to N points inside "
                                    "each labelled object to find its parts (needs --taxonomy)."),
    sam: str = typer.Option("vit_b", "--sam", help=SAM_HELP),
    clip: str = typer.Option("ViT-B-16/openai", "--clip", help=CLIP_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    max_side: int = typer.Option(1024, "--max-side", help="Process at this long side (pixels); masks come back "
                                 "at full resolution."),
    points_per_side: int | None = typer.Option(None, "--points-per-side", help="Automatic grid density "
                                                  "(default 32; 8 for tiny-random)."),
    min_confidence: float = typer.Option(0.3, "--min-confidence", help="Probability a label needs (else unknown)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens."),
) -> None:
    """Segment an image: by text query, by clicks/box, or everything (labelled with a taxonomy)."""
    from .segmenter import Segmenter

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    terms = [t.strip() for q in (query or []) for t in q.split(",") if t.strip()]
    if query is not None and not terms:
        _fail("the text query is empty: give one or more labels (e.g. dog or 'dog, cat'), or leave it out to "
              "segment everything")
    clicks = [_parse_point(p) for p in (points or [])]
    bx = _parse_box(box) if box else None
    prompted = bool(clicks or bx)
    if prompted and terms:
        _fail("give either a text query or --points/--box, not both")
    if part_points < 0:
        _fail(f"--part-points must be 0 or more, got {part_points}")
    if part_points and (prompted or taxonomy is None):
        _fail("--part-points finds parts inside objects a taxonomy labels: it needs --taxonomy, and no --points/--box")
    if refine and not terms:
        _fail("--refine re-predicts the masks a text query matched: give a query")
    if prompted and points_per_side is not None:
        _fail("--points-per-side sets the automatic grid; it has no effect with --points/--box")
    if not image.is_file():
        _fail(f"{image}: no such image file")
    _check_output_file(out_path, "--out", OVERLAY_SUFFIXES)
    _check_output_file(save_json, "--save-json")
    _check_model(sam, "sam")
    _check_model(clip, "clip")
    _check_device(device)
    segmenter = Segmenter(sam=sam, clip=clip, device=device, taxonomy=taxonomy, max_side=max_side,
                          min_confidence=min_confidence, generator_params=_generator_params(points_per_side))
    needs_clip = bool(terms) or (taxonomy is not None and not prompted)
    _ensure_weights([sam] + ([clip] if needs_clip else []), show=not as_json)
    with err.status("segmenting…", spinner="dots") if not as_json else _nullcontext():
        if prompted:
            import numpy as np

            pts = np.asarray([c[:2] for c in clicks]) if clicks else None
            lbl = np.asarray([c[2] for c in clicks]) if clicks else None
            result = segmenter.segment_prompt(image, points=pts, labels=lbl, box=bx)
            title = f"{len(result)} masks for the prompt (best first)"
        elif terms:
            result = segmenter.segment(image, terms, refine=refine, part_points=part_points)
            title = f"{len(result)} regions match {', '.join(terms)!r}"
        else:
            result = segmenter.segment_everything(image, part_points=part_points)
            title = f"{len(result)} regions" + (f" labelled with taxonomy {taxonomy!r}" if taxonomy else
                                                " (unlabelled: give a query or --taxonomy to label them)")
    if out_path is not None:
        result.save_overlay(out_path, image)
    if save_json is not None:
        result.to_json(save_json, indent=2)
    if as_json:
        _emit_json(result.to_dict())
        return
    if tree:
        out.print(_rich_tree(result))
    else:
        out.print(_regions_table(result, title))
    if not len(result) and terms:
        out.print(f"[yellow]nothing matched {_show(', '.join(terms))!r}[/] (lower --min-confidence to be less strict)")
    if out_path is not None:
        out.print(f"overlay written to [bold]{_show(out_path)}[/]")
    if save_json is not None:
        out.print(f"JSON written to [bold]{_show(save_json)}[/]")


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield


# -- datasets ---------------------------------------------------------------------------------------------
@app.command()
@_guard
def label(
    source: Path = typer.Argument(..., help="A folder of images (recursive), a text file of paths, or a COCO JSON."),
    taxonomy: str = typer.Option(..., "--taxonomy", "-t", help="Shipped taxonomy name or YAML file."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (reuse it to resume)."),
    workers: int = typer.Option(1, "--workers", "-w", help="Processes (local) or actors (ray)."),
    engine: str = typer.Option("local", "--engine", help="local or ray (pip install 'clipsam\\[ray]')."),
    min_score: float = typer.Option(0.0, "--min-score", help="Drop regions whose label score is lower."),
    min_area: int = typer.Option(0, "--min-area", help="Drop regions smaller than this (pixels)."),
    labels: str | None = typer.Option(None, "--labels", help="Keep only these labels (comma-separated; a label "
                                         "keeps everything below it)."),
    max_regions: int = typer.Option(0, "--max-regions", help="Keep at most N regions per image (best first)."),
    unknown: bool = typer.Option(False, "--unknown", help="Also keep regions no label matched."),
    pngs: bool = typer.Option(False, "--png", help="Also write semantic and instance index PNGs."),
    force: bool = typer.Option(False, "--force", help="Discard an earlier run in OUT made with other parameters."),
    image_root: Path | None = typer.Option(None, "--image-root", help="Base folder for relative paths in a "
                                              "text file or COCO JSON (default: its own folder)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Let a COCO JSON's file_name "
                                            "point outside the image root (../, absolute paths)."),
    sam: str = typer.Option("vit_b", "--sam", help=SAM_HELP),
    clip: str = typer.Option("ViT-B-16/openai", "--clip", help=CLIP_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    max_side: int = typer.Option(1024, "--max-side", help="Processing long side in pixels."),
    points_per_side: int | None = typer.Option(None, "--points-per-side", help="Automatic grid density."),
    part_points: int = typer.Option(0, "--part-points", help="Coarse-to-fine part prompts per object."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Pseudo-label a collection into COCO (RLE masks, label paths, part-whole parents); resumable."""
    import time as _time

    from rich.progress import MofNCompleteColumn

    from .dataset import Filters, LabelJob, list_images, run_local, run_ray

    if engine not in ("local", "ray"):
        _fail(f"--engine must be local or ray, got {engine!r}")
    _check_workers(workers)
    for option, value in (("--min-area", min_area), ("--max-regions", max_regions), ("--part-points", part_points)):
        if value < 0:
            _fail(f"{option} must be 0 or more, got {value}")
    if not 0.0 <= min_score <= 1.0:
        _fail(f"--min-score must be in [0, 1], got {min_score}")
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir}: is a file; give a folder (new, or the one of an earlier run to resume it)")
    _check_model(sam, "sam")
    _check_model(clip, "clip")
    _check_device(device)
    spec = {"sam": sam, "clip": clip, "device": device, "max_side": max_side,
            "generator_params": _generator_params(points_per_side), "text_cache": sam != "tiny-random"}
    filters = Filters(min_score=min_score, min_area=min_area,
                      labels=tuple(t.strip() for t in (labels or "").split(",") if t.strip()),
                      max_regions=max_regions, include_unknown=unknown)
    items = list_images(source, image_root, allow_outside_root=allow_outside_root)
    job = LabelJob(out_dir, taxonomy, filters=filters, segmenter_spec=spec, pngs=pngs,
                   segment_params={"part_points": part_points} if part_points else {})
    _check_labels(list(filters.labels), job.tax, "--labels")
    record = job.prepare(force=force)
    todo = job.pending(items)
    _ensure_weights([sam, clip], show=not as_json)
    counts = {"found": len(items), "resumed": len(items) - len(todo), "processed": 0, "failed": 0}
    start = _time.time()
    progress = Progress(TextColumn("[bold]labelling"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(),
                        TextColumn("[red]{task.fields[errors]} errors"), console=err, disable=as_json)
    with progress:
        task = progress.add_task("labelling", total=len(todo), rate="-", errors=0)

        def on_result(res: dict[str, Any]) -> None:
            counts["processed"] += 1
            counts["failed"] += res["status"] == "error"
            rate = counts["processed"] / max(_time.time() - start, 1e-9)
            progress.update(task, advance=1, rate=f"{rate:.2f}", errors=counts["failed"])

        if engine == "ray":
            run_ray(job, todo, workers=workers, on_result=on_result)
        else:
            run_local(job, todo, workers=workers, on_result=on_result)
    record = job.finish(record, counts)
    summary = {"out": str(out_dir), **record["counts"], "seconds": round(_time.time() - start, 2)}
    if as_json:
        _emit_json(summary)
        return
    table = Table(title=_show(f"clipsam label -> {out_dir}"), title_justify="left", header_style="bold")
    table.add_column("")
    table.add_column("", justify="right")
    for key in ("found", "resumed", "processed", "images", "annotations", "errors", "seconds"):
        table.add_row(key, str(summary.get(key)))
    out.print(table)
    if summary["errors"]:
        out.print(f"[yellow]{summary['errors']} image(s) could not be processed: see "
                  f"{_show(out_dir / 'errors.jsonl')}[/]")


@app.command("eval")
@_guard
def eval_cmd(
    pred: Path = typer.Argument(..., help="annotations.json written by clipsam label."),
    gt: Path = typer.Argument(..., help="Ground truth: a COCO JSON, or a folder of PNG index masks."),
    classes: Path | None = typer.Option(None, "--classes", help="For PNG ground truth: class names, one per "
                                           "line (line i = index i)."),
    taxonomy: str | None = typer.Option(None, "--taxonomy", "-t", help="Gives GT categories label paths "
                                           "for the per-level accuracy."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Mask AP (COCOeval), semantic mIoU per class, and accuracy per taxonomy level."""
    from .evaluate import evaluate

    report = evaluate(pred, gt, classes=classes, taxonomy=taxonomy)
    if as_json:
        _emit_json(report.to_dict())
        return
    if report.mask_ap is not None:
        out.print("mask AP " + "  ".join(f"{k} {v:.3f}" for k, v in report.mask_ap.items()))
    out.print(f"mIoU {report.miou:.3f} over {len(report.class_iou)} classes")
    table = Table(header_style="bold")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, v in sorted(report.class_iou.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{v:.3f}")
    out.print(table)
    for level, acc in report.level_accuracy.items():
        out.print(f"level {level} accuracy {acc:.3f} ({report.level_counts[level]} instances)")


# -- region search ----------------------------------------------------------------------------------------
@app.command()
@_guard
def index(
    source: Path = typer.Argument(..., help="A folder of images (recursive), a text file of paths, or a COCO JSON."),
    db: Path = typer.Option(..., "--db", help="The region database folder (created; reused to add more)."),
    taxonomy: str | None = typer.Option("everyday", "--taxonomy", "-t", help="Labels for the regions."),
    sam: str = typer.Option("vit_b", "--sam", help=SAM_HELP),
    clip: str = typer.Option("ViT-B-16/openai", "--clip", help=CLIP_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    max_side: int = typer.Option(1024, "--max-side", help="Processing long side in pixels."),
    points_per_side: int | None = typer.Option(None, "--points-per-side", help="Automatic grid density."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Segment, label and embed every region of a collection into a searchable database (incremental)."""
    from rich.progress import MofNCompleteColumn

    from .dataset import list_images
    from .search import RegionIndex
    from .segmenter import Segmenter

    if db.exists() and not db.is_dir():
        _fail(f"--db {db}: is a file; a region database is a folder (new, or one made by clipsam index)")
    _check_model(sam, "sam")
    _check_model(clip, "clip")
    _check_device(device)
    segmenter = Segmenter(sam=sam, clip=clip, device=device, max_side=max_side,
                          generator_params=_generator_params(points_per_side), text_cache=sam != "tiny-random")
    paths = [i.path for i in list_images(source)]
    store = RegionIndex(db, segmenter, taxonomy=taxonomy)
    store.check_models()
    _ensure_weights([sam, clip], show=not as_json)
    progress = Progress(TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[regions]} regions"), console=err, disable=as_json)
    errors: list[dict[str, Any]] = []
    with progress:
        task = progress.add_task("indexing", total=len(paths), regions=len(store))

        def on_result(res: dict[str, Any]) -> None:
            if res["status"] == "error":
                errors.append(res)
            progress.update(task, advance=1, regions=len(store))

        counts = store.add(paths, on_result=on_result)
    summary = {"db": str(db), **counts, "total_regions": len(store), "total_images": store.image_count(),
               "errors": [{"path": e["path"], "reason": e["reason"]} for e in errors]}
    if as_json:
        _emit_json(summary)
        return
    out.print(f"added {counts['added']} images ({counts['regions']} regions), skipped {counts['skipped']} already "
              f"indexed, {counts['failed']} failed; {summary['total_regions']} regions in {_show(db)}")
    for e in errors:
        out.print(f"[yellow]skipped[/] {_show(e['reason'])}", highlight=False)


@app.command()
@_guard
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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Find regions by text or by example across an indexed collection."""
    from .search import RegionIndex

    if (query is None) == (like is None):
        _fail("give a text query or --like IMAGE (one of them)")
    if query is not None and not query.strip():
        _fail("the text query is empty")
    if box and like is None:
        _fail("--box goes with --like IMAGE")
    if like is not None and not like.is_file():
        _fail(f"--like {like}: no such image file")
    if k < 1:
        _fail(f"-k must be at least 1, got {k}")
    if db.exists() and not db.is_dir():
        _fail(f"--db {db}: is a file, not a region database (a folder made by clipsam index)")
    if save_crops is not None and save_crops.exists() and not save_crops.is_dir():
        _fail(f"--save-crops {save_crops}: is a file; give a folder")
    meta = RegionIndex(db).meta() if db.exists() else None
    store = RegionIndex(db)
    if clip is not None or meta is not None:
        from .segmenter import Segmenter

        name = clip or meta["clip"]  # type: ignore[index]
        _check_model(name, "clip")
        segmenter = Segmenter(sam=(meta or {}).get("sam", "vit_b"), clip=name, seed=(meta or {}).get("seed", 0),
                              text_cache=name != "tiny-random")
        store = RegionIndex(db, segmenter)
        store.check_models(meta)
        if label_filter:
            tax = store.taxonomy_of(meta)
            if tax is not None:
                _check_labels([label_filter], tax, "--label")
        _ensure_weights([name], show=not as_json)
    hits = store.search(query if like is None else like, k=k, box=_parse_box(box) if box else None,
                        label=label_filter, min_area=min_area)
    if save_crops is not None:
        _save_hits(hits, save_crops)
    if as_json:
        _emit_json([h.to_dict() | {"rle": None} for h in hits])
        return
    table = Table(title=_show(f"{len(hits)} regions for {query or str(like)!r}"), title_justify="left",
                  header_style="bold")
    for col in ("#", "similarity", "image", "region", "label path", "score", "area", "bbox x,y,w,h"):
        table.add_column(col)
    for n, h in enumerate(hits, 1):
        table.add_row(str(n), f"{h.similarity:.3f}", _show(h.image_path), str(h.region_id),
                      _show("/".join(h.label_path) or h.kind), f"{h.score:.2f}", f"{h.area:,}",
                      ",".join(f"{v:.0f}" for v in h.bbox_xywh))
    out.print(table)
    if save_crops is not None:
        out.print(f"crops and overlays written to [bold]{_show(save_crops)}[/]")


def _save_hits(hits: list[Any], folder: Path) -> None:
    import numpy as np
    from PIL import Image

    from .crops import crop_region
    from .image import load_image
    from .overlay import render_overlay
    from .result import Region, Segmentation

    folder.mkdir(parents=True, exist_ok=True)
    for n, h in enumerate(hits, 1):
        image = load_image(h.image_path)
        mask = h.mask()
        side = int(max(h.bbox_xywh[2], h.bbox_xywh[3], 1))
        crop = crop_region(image, mask, h.bbox_xywh, size=min(max(side, 64), 512), margin=0.1, fill="grey")
        Image.fromarray(crop).save(folder / f"{n:03d}_crop.png")
        region = Region(id=h.region_id, rle=h.rle, bbox_xywh=h.bbox_xywh, area=h.area, label=h.label or h.kind,
                        score=h.score, label_path=h.label_path, kind=h.kind)
        seg = Segmentation(image_size=mask.shape, regions=(region,))
        render_overlay(seg, np.asarray(image)).save(folder / f"{n:03d}_overlay.png")


# -- weights ----------------------------------------------------------------------------------------------
@weights_app.command("list")
@_guard
def weights_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Show every known checkpoint and whether it is in the cache."""
    rows = []
    for name, c in sorted(W.REGISTRY.items(), key=lambda kv: (kv[1].family != "sam", kv[0])):
        path = W.cache_dir() / c.filename
        rows.append({"name": name, "family": c.family, "cached": path.is_file(), "path": str(path), "url": c.url,
                     "sha256": c.sha256, "size": c.size, "license": c.license, "description": c.description})
    if as_json:
        _emit_json({"cache_dir": str(W.cache_dir()), "offline": W.is_offline(), "checkpoints": rows})
        return
    table = Table(title=f"Checkpoints (cache: {W.cache_dir()})", title_justify="left", header_style="bold")
    for col in ("name", "model", "cached", "sha256", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"].upper(), "[green]yes[/]" if r["cached"] else "[dim]no[/]",
                      r["sha256"][:12] + "…", r["description"])
    out.print(table)
    out.print("[dim]tiny-random (SAM and CLIP): random-weight toy models for tests; no download, "
              "output meaningless.[/]")


@weights_app.command("download")
@_guard
def weights_download(
    names: list[str] = typer.Argument(..., help="Checkpoint names (see `clipsam weights list`)."),
    force: bool = typer.Option(False, "--force", help="Download again even when cached."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Download checkpoints into the cache, verifying their SHA-256."""
    if W.is_offline():
        _fail("offline mode is on (CLIPSAM_OFFLINE / HF_HUB_OFFLINE): nothing can be downloaded")
    done = []
    with _download_progress(not as_json) as make:
        for name in names:
            ckpt = W.get(name)
            path = W.fetch(ckpt.name, progress=make(ckpt.name)) if force or not W.is_cached(ckpt.name) else \
                W.ensure(ckpt.name)
            done.append({"name": ckpt.name, "path": str(path), "sha256": ckpt.sha256})
    if as_json:
        _emit_json(done)
    else:
        for d in done:
            out.print(f"[green]ok[/] {d['name']} -> {d['path']}")


@weights_app.command("import")
@_guard
def weights_import(
    name: str = typer.Argument(..., help="Checkpoint name, e.g. vit_b."),
    file: Path = typer.Argument(..., help="The checkpoint file you already have."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Copy a checkpoint file you already have into the cache (its SHA-256 is checked first)."""
    path = W.import_file(name, file)
    if as_json:
        _emit_json({"name": W.get(name).name, "path": str(path), "sha256": W.get(name).sha256})
    else:
        out.print(f"[green]ok[/] imported {file} as {W.get(name).name} -> {path}")


@weights_app.command("verify")
@_guard
def weights_verify(
    names: list[str] | None = typer.Argument(None, help="Checkpoints to check (default: all cached)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Re-hash cached checkpoints; exit 1 if any does not match its pinned SHA-256."""
    results = list(W.verify(names or None))
    if not names:
        results = [r for r in results if r.status != "missing"]
    bad = [r for r in results if r.status == "mismatch"] + ([r for r in results if r.status == "missing"] if names
                                                            else [])
    if as_json:
        _emit_json([{"name": r.name, "path": str(r.path), "status": r.status, "sha256": r.sha256} for r in results])
    else:
        if not results:
            out.print(f"no checkpoints cached in {W.cache_dir()}")
        for r in results:
            colour = {"ok": "green", "missing": "yellow", "mismatch": "red"}[r.status]
            out.print(f"[{colour}]{r.status}[/] {r.name} ({r.path})")
    if bad:
        raise typer.Exit(1)


# -- taxonomy ---------------------------------------------------------------------------------------------
def _taxonomy_tree(node: Any, tree: Tree, depth: int | None, level: int = 1) -> None:
    if depth is not None and level > depth:
        return
    for child in node.children:
        syn = [p for p in child.prompts if p != child.name]
        branch = tree.add(f"[bold]{child.name}[/]" + (f" [dim]({', '.join(syn)})[/]" if syn else ""))
        _taxonomy_tree(child, branch, depth, level + 1)
    for part in node.parts:
        branch = tree.add(f"[cyan]{part.name}[/] [dim]part[/]")
        _taxonomy_tree(part, branch, depth, level + 1)


@taxonomy_app.command("list")
@_guard
def taxonomy_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """The taxonomies shipped with clipsam."""
    from .taxonomy import load_taxonomy, shipped_taxonomies

    rows = []
    for name, path in shipped_taxonomies().items():
        t = load_taxonomy(path)
        rows.append({"name": name, "labels": len(t), "top_level": len(t.top),
                     "parts": sum(1 for n in t if n.is_part), "description": t.description, "path": str(path)})
    if as_json:
        _emit_json(rows)
        return
    table = Table(title="Shipped taxonomies", title_justify="left", header_style="bold")
    for col in ("name", "labels", "top level", "parts", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["labels"]), str(r["top_level"]), str(r["parts"]), r["description"])
    out.print(table)


@taxonomy_app.command("show")
@_guard
def taxonomy_show(
    name: str = typer.Argument(..., help="Shipped name or YAML file."),
    depth: int | None = typer.Option(None, "--depth", "-d", help="Levels to show."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Print a taxonomy as a tree (is-a children in bold, parts in cyan)."""
    from .taxonomy import load_taxonomy

    t = load_taxonomy(name)
    if as_json:
        _emit_json(t.to_dict())
        return
    tree = Tree(f"[bold]{t.name}[/] ({len(t)} labels){' — ' + t.description if t.description else ''}")
    _taxonomy_tree(t.root, tree, depth)
    out.print(tree)


@taxonomy_app.command("path")
@_guard
def taxonomy_path(
    label: str = typer.Argument(..., help="A label or synonym, e.g. puppy."),
    taxonomy: str = typer.Option("everyday", "--taxonomy", "-t", help="Shipped name or YAML file."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Where a label sits: `clipsam taxonomy path puppy` prints animal/dog/puppy."""
    from .taxonomy import load_taxonomy

    hits = load_taxonomy(taxonomy).find(label)
    if as_json:
        _emit_json([{"path": n.path_str, "is_part": n.is_part} for n in hits])
    elif hits:
        for n in hits:
            out.print(n.path_str + (" [dim](part)[/]" if n.is_part else ""), highlight=False)
    if not hits:
        _fail(f"{label!r} is not in taxonomy {taxonomy!r}; try `clipsam taxonomy search {label}`", 1)


@taxonomy_app.command("search")
@_guard
def taxonomy_search(
    word: str = typer.Argument(..., help="Text to look for in names and synonyms."),
    taxonomy: str = typer.Option("everyday", "--taxonomy", "-t", help="Shipped name or YAML file."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Labels whose name or a synonym contains WORD."""
    from .taxonomy import load_taxonomy

    hits = load_taxonomy(taxonomy).search(word)
    if as_json:
        _emit_json([{"path": n.path_str, "prompts": list(n.prompts), "is_part": n.is_part} for n in hits])
        return
    if not hits:
        out.print(f"no label in {taxonomy!r} mentions {word!r}")
    for n in hits:
        out.print(f"{n.path_str}  [dim]{', '.join(n.prompts)}{' (part)' if n.is_part else ''}[/]", highlight=False)


@taxonomy_app.command("validate")
@_guard
def taxonomy_validate(
    file: str = typer.Argument(..., help="A taxonomy YAML file (or shipped name)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check a taxonomy file; errors name the file and the node."""
    from .taxonomy import load_taxonomy

    t = load_taxonomy(file)
    summary = {"name": t.name, "labels": len(t), "top_level": len(t.top), "parts": sum(1 for n in t if n.is_part),
               "valid": True}
    if as_json:
        _emit_json(summary)
    else:
        out.print(f"[green]ok[/] {file}: {summary['labels']} labels, {summary['top_level']} top-level, "
                  f"{summary['parts']} parts")


@app.command()
def version() -> None:
    """Print clipsam's version."""
    out.print(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
