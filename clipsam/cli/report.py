"""``clipsam report``: one self-contained HTML page for a ``clipsam label`` output."""

from __future__ import annotations

from pathlib import Path

import typer

from ..files import check_outputs
from .common import check_output_file, emit_json, err, fail, guard, json_option, out, overwrite_option, show


@guard
def report(
    folder: Path = typer.Argument(..., help="The --out folder of a clipsam label run."),
    html_path: Path | None = typer.Option(None, "--out", "-o", help="Where to write the page "
                                          "(default FOLDER/report.html)."),
    max_images: int = typer.Option(200, "--max-images", help="Show at most N images (the category counts cover "
                                   "all)."),
    image_root: Path | None = typer.Option(None, "--image-root", help="Where the images are: only images inside it "
                                           "are embedded (default: the folder that holds FOLDER); also where to "
                                           "find images that moved (joined with each file_name)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Embed images from anywhere the "
                                            "output folder names (trust the folder).", metavar=""),
    overwrite: bool = overwrite_option(),
    as_json: bool = json_option(),
) -> None:
    """Write a self-contained HTML report of a label run: thumbnails with overlays, part-whole trees, counts."""
    from ..report import label_report, write_report

    if not folder.is_dir():
        fail(f"{folder}: no such folder; give the --out folder of a clipsam label run")
    if image_root is not None and not image_root.is_dir():
        fail(f"--image-root {image_root}: no such folder")
    if max_images < 1:
        fail(f"--max-images must be at least 1, got {max_images}")
    target = html_path if html_path is not None else folder / "report.html"
    check_output_file(target, "--out", (".html", ".htm"))
    check_outputs([("--out", target)], [], overwrite=overwrite)
    with err.status("writing the report…", spinner="dots") if not as_json else _quiet():
        page, counts = label_report(folder, max_images=max_images, image_root=image_root,
                                    allow_outside_root=allow_outside_root)
        write_report(target, page)
    summary = {"report": str(target), **counts, "bytes": target.stat().st_size}
    if as_json:
        emit_json(summary)
        return
    out.print(f"report of {counts['shown']} of {counts['images']} images ({counts['regions']} regions, "
              f"{counts['errors']} errors) written to [bold]{show(target)}[/]")
    if counts["outside_root"]:
        root = image_root if image_root is not None else folder.resolve().parent
        out.print(f"[yellow]{counts['outside_root']} image(s) lie outside {show(root)} and are shown without a "
                  "thumbnail[/]: pass --image-root FOLDER (or --allow-outside-root if you trust this output folder)")


def _quiet():
    from contextlib import nullcontext

    return nullcontext()
