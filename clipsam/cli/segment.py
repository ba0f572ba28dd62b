"""``clipsam segment``: one image, by text query, clicks / box, or everything; tables and the tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.tree import Tree

from ..files import atomic_write, check_outputs
from .common import (
    OVERLAY_SUFFIXES,
    TAXONOMY_HELP,
    check_device,
    check_model,
    check_output_file,
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
    nullcontext,
    out,
    overwrite_option,
    parse_box,
    parse_point,
    plural,
    runtime_option,
    sam_option,
    show,
    verbose_logging,
)


def _regions_table(seg: Any, title: str) -> Table:
    table = Table(title=show(title), title_justify="left", header_style="bold")
    for col, kw in (("id", {"justify": "right"}), ("label", {}), ("score", {"justify": "right"}),
                    ("path", {}), ("kind", {}), ("area", {"justify": "right"}), ("bbox x,y,w,h", {}),
                    ("parent", {"justify": "right"}), ("pred IoU", {"justify": "right"})):
        table.add_column(col, overflow="fold", **kw)
    for r in sorted(seg.regions, key=lambda r: (-r.score, r.id)):
        table.add_row(str(r.id), show(r.label or "-"), f"{r.score:.2f}" if r.label_path else "-",
                      show(r.label_path_str or "-"), r.kind, f"{r.area:,}", ",".join(f"{v:.0f}" for v in r.bbox_xywh),
                      "-" if r.parent_id is None else str(r.parent_id), f"{r.predicted_iou:.2f}")
    return table


def _rich_tree(seg: Any) -> Tree:
    name = Path(seg.image_path).name if seg.image_path else "image"
    root = Tree(f"[bold]{show(name)}[/] ({seg.image_size[1]}x{seg.image_size[0]}, {len(seg)} regions)")
    kids = seg.tree
    by_id = {r.id: r for r in seg.regions}

    def text(r: Any) -> str:
        label = r.label or "(unlabelled)"
        tag = r.kind if r.kind in ("part", "unknown", "unknown part") else (r.label_path_str or r.kind)
        style = "dim" if r.kind.startswith("unknown") else ("cyan" if r.kind == "part" else "bold green")
        return f"[{style}]{show(label)}[/] {r.score:.2f} {show(f'[{tag}]')} [dim]#{r.id}[/]"

    def add(node: Tree, rid: int) -> None:
        child = node.add(text(by_id[rid]))
        for cid in kids.get(rid, []):
            add(child, cid)

    for rid in kids.get(None, []):
        add(root, rid)
    return root


def _write_outputs(result: Any, image: Path, segmenter: Any, paths: dict[str, Path | None]) -> list[tuple[str, Path]]:
    """Write the outputs asked for (each atomically, marked as clipsam's); returns ``(what, path)`` of each."""
    if paths["overlay"] is not None:
        result.save_overlay(paths["overlay"], image)
    if paths["JSON"] is not None:
        result.to_json(paths["JSON"], indent=2)
    if paths["COCO"] is not None:
        coco = result.to_coco(taxonomy=segmenter.taxonomy, file_name=image.name)
        atomic_write(paths["COCO"], json.dumps(coco).encode("utf-8"))
    if paths["HTML report"] is not None:
        from ..report import segmentation_report, write_report

        write_report(paths["HTML report"], segmentation_report(result, image, parameters=segmenter.config()))
    return [(what, path) for what, path in paths.items() if path is not None]


def _check_combination(query_given: bool, terms: list[str], prompted: bool, taxonomy: str | None, refine: bool,
                       part_points: int, points_per_side: int | None, strategy: str = "grid") -> None:
    """Refuse empty queries and options that have no effect together, before anything runs."""
    if query_given and not terms:
        fail("the text query is empty: give one or more labels (e.g. dog or 'dog, cat'), or leave it out to "
             "segment everything")
    if prompted and terms:
        fail("give either a text query or --points/--box, not both")
    if part_points < 0:
        fail(f"--part-points must be 0 or more, got {part_points}")
    if part_points and (prompted or taxonomy is None):
        fail("--part-points finds parts inside objects a taxonomy labels: it needs --taxonomy, and no --points/--box")
    if refine and not terms:
        fail("--refine re-predicts the masks a text query matched: give a query")
    if prompted and points_per_side is not None:
        fail("--points-per-side sets the automatic grid; it has no effect with --points/--box")
    if strategy == "guided" and prompted:
        fail("--strategy guided places prompts for a text query or a taxonomy; clicks and boxes are prompts already")
    if strategy == "guided" and not terms and taxonomy is None:
        fail("--strategy guided needs a text query or --taxonomy (their labels guide the prompts)")


@guard
def segment(
    image: Path = typer.Argument(..., help="Image file (JPEG, PNG, TIFF, WebP, …)."),
    query: list[str] | None = typer.Argument(None, help="Labels to find, e.g. dog or 'dog, cat'. "
                                                "Leave out to segment everything."),
    points: list[str] | None = typer.Option(None, "--points", "-p", help="Click x,y[,label] in pixels; label 1 = "
                                               "foreground (default), 0 = background. Repeat for more clicks."),
    box: str | None = typer.Option(None, "--box", "-b", help="Box x0,y0,x1,y1 in pixels."),
    taxonomy: str | None = typer.Option(None, "--taxonomy", "-t", help=TAXONOMY_HELP),
    tree: bool = typer.Option(False, "--tree", help="Print the labelled part-whole tree.", metavar=""),
    out_path: Path | None = typer.Option(None, "--out", "-o", help="Write an overlay image (PNG/JPEG)."),
    save_json: Path | None = typer.Option(None, "--save-json", help="Write the result JSON to a file."),
    html_path: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML page: the overlay, "
                                          "the part-whole tree (hover a node to see its mask), the parameters."),
    coco_path: Path | None = typer.Option(None, "--coco", help="Write the result as a COCO file (the category ids "
                                          "clipsam label writes for the same taxonomy; image and annotation ids are "
                                          "this file's own)."),
    refine: bool = typer.Option(False, "--refine", help="Re-predict each matched mask from its own box.", metavar=""),
    part_points: int = typer.Option(0, "--part-points", help="Coarse-to-fine: prompt SAM with up to N points inside "
                                    "each labelled object to find its parts (needs --taxonomy)."),
    sam: str = sam_option(),
    clip: str = clip_option(),
    device: str = device_option(),
    runtime: str = runtime_option(),
    max_side: int = typer.Option(1024, "--max-side", help="Process at this long side (pixels); masks come back "
                                 "at full resolution."),
    full_resolution: bool = typer.Option(True, "--full-resolution/--no-full-resolution",
                                         help="Masks at the original size from SAM's logits, as stock SAM (default); "
                                         "--no-full-resolution scales the processing-size masks up (faster, "
                                         "staircase edges).", metavar=""),
    points_per_side: int | None = typer.Option(None, "--points-per-side", help="Automatic grid density "
                                                  "(default 32; 16 with --speed fast; 8 for tiny-random)."),
    speed: str = typer.Option("exact", "--speed", help="exact (stock SAM's masks) or fast (approximate: a 16x16 "
                              "grid, bf16 on CUDA, CLIP's image tower in int8 under --runtime onnx/auto on a CPU)."),
    min_confidence: float = typer.Option(0.3, "--min-confidence", help="Probability a label needs (else unknown)."),
    scoring: str = typer.Option("subtree", "--scoring", help="How taxonomy labels are scored: subtree (every label "
                                "in one softmax, summed up the tree) or top-down (level by level)."),
    strategy: str = typer.Option("grid", "--strategy", help="How masks are found: grid (SAM's full point grid) or "
                                 "guided (CLIP's relevance map places a few SAM prompts; see README)."),
    region_features: str = typer.Option("crops", "--region-features", help="How regions are embedded: crops (a "
                                        "masked crop each) or pooled (dense CLIP features averaged in each mask)."),
    overwrite: bool = overwrite_option(),
    as_json: bool = json_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens.", metavar=""),
) -> None:
    """Segment an image: by text query, by clicks/box, or everything (labelled with a taxonomy)."""
    from ..segmenter import Segmenter

    if verbose:
        verbose_logging()
    terms = [t.strip() for q in (query or []) for t in q.split(",") if t.strip()]
    clicks = [parse_point(p) for p in (points or [])]
    bx = parse_box(box) if box else None
    prompted = bool(clicks or bx)
    _check_combination(query is not None, terms, prompted, taxonomy, refine, part_points, points_per_side, strategy)
    outputs = {"overlay": out_path, "JSON": save_json, "COCO": coco_path, "HTML report": html_path}
    _check_files(image, outputs, overwrite)
    _check_models_and_choices(sam, clip, device, {"--scoring": scoring, "--strategy": strategy, "--runtime": runtime,
                                                  "--region-features": region_features, "--speed": speed})
    segmenter = Segmenter(sam=sam, clip=clip, device=device, runtime=runtime, taxonomy=taxonomy, max_side=max_side,
                          full_resolution=full_resolution, speed=speed, min_confidence=min_confidence, scoring=scoring,
                          region_features=region_features, generator_params=generator_params(points_per_side))
    if terms:  # a query that names nothing it could (a '/' outside the taxonomy's paths) fails before any download
        from ..stages.label import resolve_query

        resolve_query(terms, segmenter.taxonomy)
    needs_clip = bool(terms) or (taxonomy is not None and not prompted)
    ensure_weights([sam] + ([clip] if needs_clip else []), show=not as_json, verb="segment")
    with err.status("segmenting…", spinner="dots") if not as_json else nullcontext():
        result, title = _run(segmenter, image, clicks, bx, terms, taxonomy,
                             {"refine": refine, "part_points": part_points, "strategy": strategy})
    written = _write_outputs(result, image, segmenter, outputs)
    if as_json:
        emit_json(result.to_dict())
        return
    out.print(_rich_tree(result) if tree else _regions_table(result, title))
    if not len(result) and terms:
        hint = " (lower --min-confidence to be less strict)" if min_confidence > 0 else ""
        out.print(f"[yellow]nothing matched {show(repr(', '.join(terms)))}[/]{hint}")
    for what, path in written:
        out.print(f"{what} written to [bold]{show(path)}[/]")


def _check_files(image: Path, outputs: dict[str, Path | None], overwrite: bool) -> None:
    if not image.is_file():
        fail(f"{image}: no such image file")
    flags = {"overlay": ("--out", OVERLAY_SUFFIXES), "JSON": ("--save-json", None), "COCO": ("--coco", (".json",)),
             "HTML report": ("--html", (".html", ".htm"))}
    for what, path in outputs.items():
        check_output_file(path, *flags[what])
    check_outputs([(flags[what][0], path) for what, path in outputs.items()], [image], overwrite=overwrite)


def _check_models_and_choices(sam: str, clip: str, device: str, choices: dict[str, str]) -> None:
    from ..core.labels import SCORINGS
    from ..core.settings import REGION_FEATURES, RUNTIMES, SPEEDS
    from ..stages.guide import STRATEGIES

    check_model(sam, "sam")
    check_model(clip, "clip")
    check_device(device)
    allowed = {"--scoring": SCORINGS, "--strategy": STRATEGIES, "--region-features": REGION_FEATURES,
               "--speed": SPEEDS, "--runtime": RUNTIMES}
    for flag, value in choices.items():
        if value not in allowed[flag]:
            fail(f"{flag} must be one of {', '.join(allowed[flag])}, got {show(value)!r}")
    check_runtime(choices.get("--runtime", "torch"), device)


def _run(segmenter: Any, image: Path, clicks: list, bx: Any, terms: list[str], taxonomy: str | None,
         options: dict[str, Any]) -> tuple[Any, str]:
    """The result of the prompt, the query or everything, and the title of its table."""
    if clicks or bx is not None:
        import numpy as np

        pts = np.asarray([c[:2] for c in clicks]) if clicks else None
        lbl = np.asarray([c[2] for c in clicks]) if clicks else None
        result = segmenter.segment_prompt(image, points=pts, labels=lbl, box=bx)
        return result, f"{plural(len(result), 'mask')} for the prompt (best first)"
    if terms:
        result = segmenter.segment(image, terms, **options)
        return result, f"{plural(len(result), 'region')} match{'es' if len(result) == 1 else ''} {', '.join(terms)!r}"
    result = segmenter.segment_everything(image, part_points=options["part_points"], strategy=options["strategy"])
    return result, plural(len(result), "region") + (f" labelled with taxonomy {taxonomy!r}" if taxonomy else
                                                     " (unlabelled: give a query or --taxonomy to label them)")
